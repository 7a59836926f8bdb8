"""FID (torchmetrics' FrechetInceptionDistance, Inception-v3 of torch-fidelity by default).

The reference statistics (sums and covariance of the features of the reference images) are computed
once and cached on disk, keyed by the reference folder, the feature extractor and the resolution.
Also used for FID of accelerated images against the full model's images.

    python -m experiments.metrics.fid --images RUN/images/cat --ref COCO_VAL2017_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import load_any, load_folder, to_tensor
from .registry import Metric, Scoring, register


def _metric(feature, weights_path: str | None):
    # imported here: the registry imports this module with every run, most of which compute no FID
    from torchmetrics.image.fid import FrechetInceptionDistance

    kwargs = {"feature_extractor_weights_path": weights_path} if weights_path and isinstance(feature, int) else {}
    try:
        return FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=False, **kwargs)
    except (ImportError, ModuleNotFoundError) as err:
        raise RuntimeError("FID with Inception-v3 needs torch-fidelity (and its weights): pip install -e '.[eval]'") from err


def _add(metric, images, real: bool, batch: int = 64, size: int | None = None) -> None:
    """Feeds images (resized to size x size with bicubic filtering when given) into the metric."""
    for i in range(0, len(images), batch):
        chunk = [im if hasattr(im, "resize") else Image.fromarray(np.asarray(im)) for im in images[i:i + batch]]
        if size is not None:
            chunk = [im.convert("RGB").resize((size, size), Image.BICUBIC) for im in chunk]
        metric.update(to_tensor(chunk), real=real)


STATE = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def reference_stats(metric, ref_images_or_dir, cache: Path | None, key: str, size: int | None) -> None:
    """Loads the reference statistics into `metric` from the cache, or computes and caches them."""
    file = cache / f"fid_ref_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cache else None
    if file is not None and file.exists():
        state = torch.load(file, weights_only=True)
        for name in STATE:
            setattr(metric, name, state[name])
        return
    refs = load_any(ref_images_or_dir) if isinstance(ref_images_or_dir, (str, Path)) else ref_images_or_dir
    _add(metric, refs, real=True, size=size)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({name: getattr(metric, name) for name in STATE}, file)


def fid(images, refs, feature=2048, size: int | None = 299, cache_dir: str | Path | None = None,
        weights_path: str | None = None) -> dict:
    """FID of `images` against `refs` (a folder or a list of images)."""
    metric = _metric(feature, weights_path)
    extractor = feature if isinstance(feature, int) else type(feature).__name__
    key = f"{Path(refs).resolve() if isinstance(refs, (str, Path)) else id(refs)}|{extractor}|{size}"
    reference_stats(metric, refs, Path(cache_dir) if cache_dir and isinstance(refs, (str, Path)) else None, key, size)
    _add(metric, list(images), real=False, size=size)
    return {"fid": metric.compute().item(), "num_images": len(images),
            "num_reference": int(metric.real_features_num_samples)}


def _against_reference(scoring: Scoring) -> float:
    """FID of a variant's images against the reference folder of `metrics.fid` (its statistics cached)."""
    settings = scoring.settings.fid
    result = fid(scoring.images, settings.reference, cache_dir=Path(settings.cache_dir).expanduser(),
                 weights_path=settings.weights)
    scoring.notes["fid_num_reference"] = result["num_reference"]
    return result["fid"]


def _fid(settings) -> dict:
    return settings.get("fid") or {}


register(Metric(
    name="fid", short="FID", label="FID", compute=_against_reference,
    enabled=lambda settings: bool(_fid(settings).get("enabled") and _fid(settings).get("reference")),
    lower_is_better=True, per_image=False, digits=2,
))
register(Metric(
    name="fid_vs_full", short="FID", label="FID to the full model's images",
    compute=lambda s: fid(s.images, s.full, weights_path=s.settings.fid.weights)["fid"],
    enabled=lambda settings: bool(_fid(settings).get("enabled") and _fid(settings).get("vs_full")),
    lower_is_better=True, against_full=True, per_image=False, digits=2,
))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="FID of a folder of images against reference images.")
    p.add_argument("--images", required=True)
    p.add_argument("--ref", required=True, help="folder of reference images (e.g. COCO val2017 or full-model images)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "cat-pruning" / "fid"))
    p.add_argument("--weights", default=None, help="local Inception weights (torch-fidelity format)")
    args = p.parse_args(argv)
    images = load_folder(args.images)[1]
    print(json.dumps(fid(images, args.ref, cache_dir=args.cache, weights_path=args.weights), indent=2))


if __name__ == "__main__":
    main()
