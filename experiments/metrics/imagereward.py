"""ImageReward (human-preference score), an optional extra: pip install -e '.[imagereward]'."""

from __future__ import annotations


def image_reward(images, prompts, model: str = "ImageReward-v1.0", device: str | None = None) -> dict:
    try:
        import ImageReward as RM
    except ImportError as err:
        raise RuntimeError("ImageReward is not installed: pip install -e '.[imagereward]'") from err
    import torch

    scorer = RM.load(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scores = [float(scorer.score(prompt, image)) for image, prompt in zip(images, prompts)]
    return {"image_reward": sum(scores) / len(scores), "per_image": scores}
