"""Draws scenes: each object jittered inside its grid cell, on a dark plain, striped or checkered
background."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from ..shapes.render import SUPERSAMPLE, draw_objects
from .grammar import PLACES, Scene

SIZE_FRACTION = {"small": 0.075, "large": 0.13}  # radius as a fraction of the image side


def layout(scene: Scene, rng: random.Random) -> list[tuple[str, str, float, float, float]]:
    """(colour, shape, radius, x, y) of every object, in fractions of the side."""
    out = []
    for item in scene.items:
        col, row = PLACES[item.place]
        radius = SIZE_FRACTION[item.size]
        slack = max(0.0, 1 / 6 - radius - 0.01)
        x = (col + 0.5) / 3 + rng.uniform(-slack, slack) * 0.6
        y = (row + 0.5) / 3 + rng.uniform(-slack, slack) * 0.6
        out.append((item.color, item.shape, radius, x, y))
    return out


def _background(pen: ImageDraw.ImageDraw, kind: str, big: int, rng: random.Random) -> None:
    base = rng.randint(20, 70)
    dark = tuple(max(0, min(255, base + rng.randint(-8, 8))) for _ in range(3))
    light = tuple(min(255, v + rng.randint(20, 35)) for v in dark)
    pen.rectangle([0, 0, big, big], fill=dark)
    period = big // rng.choice([6, 8, 10])
    if kind == "striped":
        vertical = rng.random() < 0.5
        for k in range(0, big, period):
            box = [k, 0, k + period // 2, big] if vertical else [0, k, big, k + period // 2]
            pen.rectangle(box, fill=light)
    elif kind == "checkered":
        for i in range(0, big, period):
            for j in range(0, big, period):
                if (i // period + j // period) % 2:
                    pen.rectangle([i, j, i + period, j + period], fill=light)


def render(scene: Scene, size: int = 128, seed: int = 0) -> np.ndarray:
    """uint8 [size, size, 3]: a random rendering of a scene."""
    rng = random.Random(seed)
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big))
    pen = ImageDraw.Draw(img)
    _background(pen, scene.background, big, rng)
    draw_objects(pen, layout(scene, rng), big)
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.uint8)
