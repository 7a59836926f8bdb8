"""A weight-free judge of scene captions: every object is checked on its own.

Coloured regions come from the shapes judge (nearest palette colour, connected regions, fill ratio
for the shape). For each object of the caption, the largest region of its colour is checked for
colour (present), shape, size and place (its centroid in the named grid cell, with a margin); one
more check asks that the image holds exactly the caption's objects (count: one region per asked
colour, no region of an unasked colour). The score is the mean of all checks.
"""

from __future__ import annotations

import numpy as np

from ..shapes.judge import mean_score, regions
from .grammar import PLACES, Scene, parse
from .render import SIZE_FRACTION

PLACE_MARGIN = 0.06  # a centroid may stray this far (fraction of the side) outside its cell


AREA_PER_R2 = {"circle": np.pi, "square": 1.8**2, "triangle": 1.8}  # drawn area over radius squared


def _size(area: float, shape: str, side: int) -> str:
    """Size from the area, against the drawn areas of the two sizes of the asked shape."""
    small, large = (AREA_PER_R2[shape] * (SIZE_FRACTION[s] * side) ** 2 for s in ("small", "large"))
    return "large" if area > (small * large) ** 0.5 else "small"


def _in_cell(x: float, y: float, place: str) -> bool:
    col, row = PLACES[place]
    return bool(col / 3 - PLACE_MARGIN < x < (col + 1) / 3 + PLACE_MARGIN
            and row / 3 - PLACE_MARGIN < y < (row + 1) / 3 + PLACE_MARGIN)


def judge_scene(image, scene: Scene) -> dict:
    """Per-object checks, the count check and the score (mean of every check)."""
    found = regions(image)
    side = np.asarray(image).shape[1]
    objects = []
    for item in scene.items:
        mine = sorted((r for r in found if r.color == item.color), key=lambda r: -r.area)
        main = mine[0] if mine else None
        objects.append({
            "color": main is not None,
            "shape": main is not None and main.shape == item.shape,
            "size": main is not None and _size(main.area, item.shape, side) == item.size,
            "position": main is not None and _in_cell(main.x, main.y, item.place),
        })
    asked = {i.color for i in scene.items}
    count = all(sum(r.color == c for r in found) == 1 for c in asked) and all(r.color in asked for r in found)
    checks = [v for o in objects for v in o.values()] + [count]
    return {"objects": objects, "count": count, "score": float(np.mean(checks))}


def judge(image, prompt: str) -> dict:
    return judge_scene(image, parse(prompt))


def adherence(images, prompts) -> float:
    """Mean judge score over paired images and captions."""
    return mean_score(judge, images, prompts)
