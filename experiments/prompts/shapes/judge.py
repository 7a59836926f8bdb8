"""A deterministic, weight-free judge of prompt adherence for the shapes grammar.

Pixels are assigned to the nearest palette colour (or to the background when none is close),
connected regions of each colour are found, and each region's fill ratio (area over bounding box),
size and centroid give its shape, size and position. A caption is checked on colour, shape, count
and position; the score is the fraction of those checks that pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .grammar import COLORS, Scene, parse
from .render import SIZE_FRACTION

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # [C, 3]
_NAMES = list(COLORS)
MAX_COLOR_DISTANCE = 90.0
MIN_AREA_FRACTION = 0.004  # regions smaller than this share of the image are noise


@dataclass
class Region:
    color: str
    area: int
    x: float  # centroid, as a fraction of the width
    y: float
    fill: float  # area / bounding-box area

    @property
    def shape(self) -> str:
        if self.fill > 0.87:
            return "square"
        return "circle" if self.fill > 0.64 else "triangle"

    def size(self, side: int) -> str:
        small, large = (np.pi * (SIZE_FRACTION[s] * side) ** 2 for s in ("small", "large"))
        return "large" if self.area > (small * large) ** 0.5 else "small"


def regions(image) -> list[Region]:
    """Coloured regions of an image (PIL image or uint8 array [H, W, 3])."""
    img = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    h, w, _ = img.shape
    dist = np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [H, W, C]
    nearest = dist.argmin(-1)
    valid = dist.min(-1) < MAX_COLOR_DISTANCE
    found = []
    for c, name in enumerate(_NAMES):
        labels, count = ndimage.label(valid & (nearest == c))
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[box] == index
            area = int(mask.sum())
            if area < MIN_AREA_FRACTION * h * w:
                continue
            ys, xs = np.nonzero(mask)
            fill = area / float(mask.shape[0] * mask.shape[1])
            found.append(Region(name, area, (xs.mean() + box[1].start + 0.5) / w, (ys.mean() + box[0].start + 0.5) / h, fill))
    return found


def _in_place(region: Region, place: str) -> bool:
    return {
        "on the left": region.x < 0.42,
        "on the right": region.x > 0.58,
        "at the top": region.y < 0.42,
        "at the bottom": region.y > 0.58,
        "in the center": abs(region.x - 0.5) < 0.17 and abs(region.y - 0.5) < 0.17,
    }[place]


def _related(a: Region, b: Region, relation: str) -> bool:
    return {
        "above": a.y < b.y - 0.1,
        "below": a.y > b.y + 0.1,
        "left of": a.x < b.x - 0.1,
        "right of": a.x > b.x + 0.1,
    }[relation]


def judge_scene(image, scene: Scene) -> dict:
    """Per-aspect checks and their mean."""
    found = regions(image)
    side = np.asarray(image).shape[1]
    of = {name: sorted((r for r in found if r.color == name), key=lambda r: -r.area) for name in COLORS}
    wanted = scene.things
    checks = {"color": all(of[t.color] for t in wanted)}
    if scene.kind == "count":
        mine = of[wanted[0].color]
        checks["count"] = len(mine) == scene.count
        checks["shape"] = bool(mine) and sum(r.shape == wanted[0].shape for r in mine) * 2 > len(mine)
    else:
        main = [of[t.color][0] if of[t.color] else None for t in wanted]
        checks["count"] = all(len(of[t.color]) == 1 for t in wanted)
        checks["shape"] = all(r is not None and r.shape == t.shape for r, t in zip(main, wanted))
        checks["size"] = all(r is not None and r.size(side) == t.size for r, t in zip(main, wanted))
        if scene.kind == "place":
            checks["position"] = main[0] is not None and _in_place(main[0], scene.place)
        else:
            checks["position"] = None not in main and _related(main[0], main[1], scene.relation)
    scored = [checks[k] for k in ("color", "shape", "count", "position") if k in checks]
    return {**{k: bool(v) for k, v in checks.items()}, "score": float(np.mean(scored))}


def judge(image, prompt: str) -> dict:
    """Checks one image against its caption: {'color', 'shape', 'count', 'position'?, 'size'?, 'score'}."""
    return judge_scene(image, parse(prompt))


def mean_score(judge_fn, images, prompts) -> float:
    """Mean of `judge_fn(image, prompt)["score"]` over paired images and captions."""
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts) or not images:
        raise ValueError(f"adherence needs as many images as prompts (got {len(images)} and {len(prompts)})")
    return float(np.mean([judge_fn(i, p)["score"] for i, p in zip(images, prompts)]))


def adherence(images, prompts) -> float:
    """Mean judge score over paired images and captions."""
    return mean_score(judge, images, prompts)
