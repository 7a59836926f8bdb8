"""Fidelity to the full model at the same prompt and seed: PSNR, SSIM (torchmetrics) and LPIPS.

    python -m experiments.metrics.fidelity --images RUN/images/cat --ref RUN/images/full
"""

from __future__ import annotations

import argparse
import json

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .images import load_folder, to_tensor


def fidelity(images, refs, lpips: bool = False, device: str = "cpu") -> dict:
    """Mean and per-image PSNR / SSIM (and LPIPS-alex if asked) of images against their references."""
    x, y = to_tensor(images), to_tensor(refs)
    if x.shape != y.shape:
        raise ValueError(f"fidelity needs paired images of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    out = {"psnr": psnr.mean().item(), "ssim": ssim.mean().item(),
           "per_image": {"psnr": psnr.tolist(), "ssim": ssim.tolist()}}
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
