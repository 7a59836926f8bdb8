"""ImageReward (human-preference score, as the peers' papers report it on DrawBench), an optional extra:
`pip install -e '.[imagereward]'`, then `metrics.image_reward.enabled=true` (e.g. with `metrics=paper`)."""

from __future__ import annotations

from .registry import Metric, Scoring, register


def available() -> bool:
    """Whether the ImageReward package is installed (checked before any model loads)."""
    import importlib.util

    return importlib.util.find_spec("ImageReward") is not None


def load(model: str = "ImageReward-v1.0", device: str | None = None):
    """The ImageReward scorer (its `score(prompt, image)` gives one image's reward)."""
    try:
        import ImageReward as RM
    except ImportError as err:
        raise RuntimeError("ImageReward is not installed: pip install -e '.[imagereward]'") from err
    import torch

    return RM.load(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))


def image_reward(images, prompts, scorer) -> list[float]:
    """The reward of each image for its prompt."""
    return [float(scorer.score(prompt, image)) for image, prompt in zip(images, prompts)]


def score(scoring: Scoring) -> list[float]:
    """The reward of each image, from the scorer of the run's `metrics.image_reward.model` (loaded once)."""
    scorer = scoring.once("image_reward_scorer", lambda: load(scoring.settings.image_reward.model))
    return image_reward(scoring.images, [p.text for p in scoring.prompts], scorer)


def check(settings) -> None:
    if not available():
        raise ValueError("metrics.image_reward.enabled=true needs the ImageReward package: "
                         "pip install -e '.[imagereward]' (or set metrics.image_reward.enabled=false)")


register(Metric(
    name="image_reward", short="ImageReward", label="ImageReward", compute=score,
    enabled=lambda settings: bool((settings.get("image_reward") or {}).get("enabled")), check=check,
))
