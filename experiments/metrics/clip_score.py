"""CLIP score: 100 x cosine(image, text), clamped at 0, per image and averaged.

Backends: open_clip (default `ViT-g-14` / `laion2b_s34b_b88k`, DeepCache's protocol; OpenAI `ViT-L-14`
/ `openai` selectable) and transformers' `CLIPModel` (a hub id or a local folder). Scores of different
backbones are never comparable.

    python -m experiments.metrics.clip_score --images RUN/images/cat --prompts RUN/records.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from .images import load_folder, load_prompts, to_tensor
from .registry import Metric, Scoring, register

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(images, size: int) -> torch.Tensor:
    """CLIP's resize (shorter side, bicubic) + centre crop + normalisation, in torch.  -> [N, 3, size, size]"""
    x = to_tensor(images)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                      antialias=True, align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (x - mean) / std


def _features(out) -> torch.Tensor:
    """transformers >= 5 returns an output object from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """Batched CLIP score on one backbone."""

    def __init__(self, backend: str = "open_clip", model: str = "ViT-g-14", pretrained: str = "laion2b_s34b_b88k",
                 device: str | None = None, batch_size: int = 32, model_obj=None, tokenizer=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.backend = backend
        if model_obj is not None:  # an already built transformers CLIPModel (tests, notebooks)
            self.model, self.tokenizer = model_obj.to(self.device).eval(), tokenizer
            self.image_size = model_obj.config.vision_config.image_size
        elif backend == "open_clip":
            try:
                import open_clip
            except ImportError as err:
                raise RuntimeError("the open_clip backend needs open-clip-torch and torchvision: "
                                   "pip install -e '.[eval]'") from err
            self.model, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=self.device)
            self.tokenizer = open_clip.get_tokenizer(model)
            self.image_size = self.model.visual.image_size[0] if isinstance(self.model.visual.image_size, tuple) \
                else self.model.visual.image_size
            self.model.eval()
        elif backend == "transformers":
            from transformers import AutoTokenizer, CLIPModel

            self.model = CLIPModel.from_pretrained(model, use_safetensors=True).to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.image_size = self.model.config.vision_config.image_size
        else:
            raise ValueError(f"clip backend {backend!r} is invalid; allowed: open_clip, transformers")

    @torch.no_grad()
    def _embed(self, images, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = preprocess(images, self.image_size).to(self.device)
        if self.backend == "open_clip" and not hasattr(self.model, "get_image_features"):
            img = self.model.encode_image(pixels)
            txt = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))
        else:
            tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
            img = _features(self.model.get_image_features(pixel_values=pixels))
            txt = _features(self.model.get_text_features(**tokens))
        return F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)

    def score(self, images, prompts) -> torch.Tensor:
        """Per-image scores.  -> [N]"""
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"CLIP score needs one prompt per image, got {len(images)} images and {len(prompts)} prompts")
        out = []
        for i in range(0, len(images), self.batch_size):
            img, txt = self._embed(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
            out.append((100 * (img * txt).sum(-1)).clamp(min=0).cpu())
        return torch.cat(out)


def clip_score(scoring: Scoring) -> torch.Tensor:
    """Per-image scores on the backbone of the run's `metrics.clip` (loaded once per evaluation).  -> [N]"""
    clip = scoring.settings.clip
    scorer = scoring.once("clip_scorer", lambda: ClipScorer(clip.backend, clip.model, clip.pretrained,
                                                            batch_size=clip.batch_size))
    return scorer.score(scoring.images, [p.text for p in scoring.prompts])


register(Metric(
    name="clip_score", short="CLIP score", label="CLIP score", compute=clip_score,
    enabled=lambda settings: bool((settings.get("clip") or {}).get("enabled")), margin=0.5, digits=2,
))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="CLIP score of a folder of <index>.png images against their prompts.")
    p.add_argument("--images", required=True)
    p.add_argument("--prompts", required=True, help="records.jsonl or a text file with one prompt per line")
    p.add_argument("--backend", default="open_clip", choices=["open_clip", "transformers"])
    p.add_argument("--model", default="ViT-g-14")
    p.add_argument("--pretrained", default="laion2b_s34b_b88k")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    indices, images = load_folder(args.images)
    scorer = ClipScorer(args.backend, args.model, args.pretrained, batch_size=args.batch_size)
    scores = scorer.score(images, load_prompts(args.prompts, indices))
    print(json.dumps({"clip_score": scores.mean().item(), "num_images": len(scores),
                      "backbone": f"{args.backend}:{args.model}:{args.pretrained}"}, indent=2))


if __name__ == "__main__":
    main()
