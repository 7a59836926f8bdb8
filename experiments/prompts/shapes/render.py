"""Draws the scenes of the shapes grammar: anti-aliased shapes on plain or lightly textured backgrounds."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

from .grammar import COLORS, Scene

SIZE_FRACTION = {"small": 0.11, "large": 0.2}  # radius as a fraction of the image side
SUPERSAMPLE = 4


def place_box(place: str, rng: random.Random) -> tuple[float, float]:
    """Centre (x, y), as fractions of the side, for a named place."""
    jitter = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731
    return {
        "on the left": (jitter(0.2, 0.3), jitter(0.35, 0.65)),
        "on the right": (jitter(0.7, 0.8), jitter(0.35, 0.65)),
        "at the top": (jitter(0.35, 0.65), jitter(0.2, 0.3)),
        "at the bottom": (jitter(0.35, 0.65), jitter(0.7, 0.8)),
        "in the center": (jitter(0.45, 0.55), jitter(0.45, 0.55)),
    }[place]


def relation_centres(relation: str, rng: random.Random) -> list[tuple[float, float]]:
    """Centres of the two objects of 'A <relation> B'."""
    a, b = rng.uniform(0.22, 0.3), rng.uniform(0.7, 0.78)
    across = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    if relation == "above":
        return [(across[0], a), (across[1], b)]
    if relation == "below":
        return [(across[0], b), (across[1], a)]
    if relation == "left of":
        return [(a, across[0]), (b, across[1])]
    return [(b, across[0]), (a, across[1])]


def scene_layout(scene: Scene, rng: random.Random) -> list[tuple[str, str, float, float, float]]:
    """(colour, shape, radius, x, y) of every object, in fractions of the side."""
    if scene.kind == "place":
        t = scene.things[0]
        return [(t.color, t.shape, SIZE_FRACTION[t.size], *place_box(scene.place, rng))]
    if scene.kind == "relation":
        return [(t.color, t.shape, SIZE_FRACTION[t.size], x, y)
                for t, (x, y) in zip(scene.things, relation_centres(scene.relation, rng))]
    t = scene.things[0]
    r = SIZE_FRACTION["small"]
    centres: list[tuple[float, float]] = []
    while len(centres) < scene.count:
        x, y = rng.uniform(r + 0.04, 1 - r - 0.04), rng.uniform(r + 0.04, 1 - r - 0.04)
        if all(math.hypot(x - cx, y - cy) > 2 * r + 0.08 for cx, cy in centres):
            centres.append((x, y))
    return [(t.color, t.shape, r, x, y) for x, y in centres]


def draw_objects(pen: ImageDraw.ImageDraw, layout, big: int) -> None:
    """Draws (colour, shape, radius, x, y) objects, in fractions of the side, on a `big`-pixel canvas."""
    for color, shape, radius, x, y in layout:
        r, cx, cy = radius * big, x * big, y * big
        fill = COLORS[color]
        if shape == "circle":
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            s = r * 0.9
            pen.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)


def draw(layout, size: int, background: tuple[int, int, int], texture: float, rng: random.Random) -> np.ndarray:
    """uint8 [size, size, 3] image of the layout."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), background)
    draw_objects(ImageDraw.Draw(img), layout, big)
    out = np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32)
    if texture > 0:
        out += np.random.default_rng(rng.getrandbits(32)).normal(0.0, texture, out.shape[:2])[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64, seed: int = 0) -> np.ndarray:
    """A random rendering of a scene on a dark plain or lightly textured background."""
    rng = random.Random(seed)
    grey = rng.randint(15, 80)
    background = tuple(min(255, max(0, grey + rng.randint(-10, 10))) for _ in range(3))
    texture = rng.choice([0.0, 0.0, 4.0])
    return draw(scene_layout(scene, rng), size, background, texture, rng)
