"""Image folders and tensors shared by the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_tensor(images) -> torch.Tensor:
    """uint8 arrays / PIL images -> float [N, 3, H, W] in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def load_folder(folder: str | Path) -> tuple[list[int], list[Image.Image]]:
    """Images named <index>.png in a folder, sorted by index."""
    # only <index>.png: temporary files a killed run may have left are never read
    files = sorted((p for p in Path(folder).glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"no <index>.png images in {folder}")
    return [int(p.stem) for p in files], [Image.open(p).convert("RGB") for p in files]


def load_prompts(path: str | Path, indices: list[int]) -> list[str]:
    """Prompts for image indices, from a records.jsonl (field `prompt`) or a text file (one per line)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        by_index = {}
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_index.setdefault(rec["index"], rec["prompt"])
        missing = [i for i in indices if i not in by_index]
        if missing:
            raise ValueError(f"{path} has no prompt for image indices {missing[:5]}")
        return [by_index[i] for i in indices]
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [lines[i] for i in indices]


def load_any(folder: str | Path, limit: int | None = None) -> list[Image.Image]:
    """Every .png / .jpg / .jpeg image of a folder (e.g. COCO val2017 references), sorted by name."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    if not files:
        raise FileNotFoundError(f"no images in {folder}; for COCO val2017 run scripts/fetch_coco_images.py")
    return [Image.open(p).convert("RGB") for p in files]
