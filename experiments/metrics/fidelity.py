"""Fidelity to the full model at the same prompt and seed: PSNR, SSIM (torchmetrics) and LPIPS.

    python -m experiments.metrics.fidelity --images RUN/images/cat --ref RUN/images/full
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from .images import load_folder, to_tensor
from .registry import Metric, Scoring, register


def psnr_ceiling(values_per_image: int) -> float:
    """The highest finite PSNR two 8-bit images can have: one value one level (1/255) apart, all others equal.
    An identical pair scores this (not infinity), so means, intervals and paired differences stay finite and an
    identical image still ranks at least as high as any other."""
    return 10.0 * math.log10(255.0 ** 2 * values_per_image)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of images in [0, 1] against their references, identical pairs at `psnr_ceiling`
    (images are compared as the 8-bit files they are saved as).  [N, 3, H, W] x2 -> [N]"""
    # torchmetrics is imported when a metric is computed, not with the registry (it slows every run's start)
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return torch.where(torch.isposinf(p), torch.full_like(p, psnr_ceiling(x[0].numel() if len(x) else 1)), p)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM.  [N, 3, H, W] x2 -> [N]"""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")


def fidelity(images, refs, lpips: bool = False, device: str = "cpu") -> dict:
    """Mean and per-image PSNR / SSIM (and LPIPS-alex if asked) of images against their references."""
    x, y = to_tensor(images), to_tensor(refs)
    if x.shape != y.shape:
        raise ValueError(f"fidelity needs paired images of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
    p, s = psnr(x, y), ssim(x, y)
    out = {"psnr": p.mean().item(), "ssim": s.mean().item(), "per_image": {"psnr": p.tolist(), "ssim": s.tolist()}}
    if lpips:
        scores = lpips_alex(x, y, device)
        out["lpips"] = scores.mean().item()
        out["per_image"]["lpips"] = scores.tolist()
    return out


def lpips_alex(x: torch.Tensor, y: torch.Tensor, device: str) -> torch.Tensor:
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError as err:
        raise RuntimeError("LPIPS needs torchvision and the lpips weights: pip install -e '.[eval]'") from err
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="none").to(device)
    return torch.cat([metric(x[i:i + 16].to(device), y[i:i + 16].to(device)).flatten().cpu()
                      for i in range(0, len(x), 16)])


def _fidelity(settings) -> bool:
    return bool(settings.get("fidelity"))


register(Metric(
    name="psnr", short="PSNR", label="PSNR to the full model", unit="dB", compute=lambda s: psnr(*s.pixels),
    enabled=_fidelity, against_full=True, margin=0.5, digits=2, comparison=True, objective=True,
))
register(Metric(
    name="ssim", short="SSIM", label="SSIM to the full model", compute=lambda s: ssim(*s.pixels),
    enabled=_fidelity, against_full=True, margin=0.005, digits=4, comparison=True,
))


def _lpips(scoring: Scoring) -> torch.Tensor:
    return lpips_alex(*scoring.pixels, "cpu")


register(Metric(
    name="lpips", short="LPIPS", label="LPIPS to the full model", compute=_lpips,
    enabled=lambda settings: _fidelity(settings) and bool(settings.get("lpips")), lower_is_better=True,
    against_full=True, margin=0.01, digits=4,
))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="PSNR/SSIM/LPIPS of images against reference images (same file names).")
    p.add_argument("--images", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--lpips", action="store_true")
    args = p.parse_args(argv)
    idx, images = load_folder(args.images)
    ref_idx, refs = load_folder(args.ref)
    common = sorted(set(idx) & set(ref_idx))
    if not common:
        raise SystemExit(f"no image index appears in both {args.images} and {args.ref}")
    pick = lambda ids, ims: [ims[ids.index(i)] for i in common]  # noqa: E731
    out = fidelity(pick(idx, images), pick(ref_idx, refs), lpips=args.lpips)
    out.pop("per_image")
    print(json.dumps({**out, "num_images": len(common)}, indent=2))


if __name__ == "__main__":
    main()
