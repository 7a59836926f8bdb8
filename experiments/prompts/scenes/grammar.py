"""A caption grammar of multi-object scenes: two to four coloured shapes at named places of a 3x3
grid, on a plain, striped or checkered background.

    "a large red circle at the top left, a small blue square in the center and a large green
     triangle at the bottom right, on a striped background"

Every object has its own colour and its own grid cell, so a judge can find each one by colour and
check its shape, size and place. Every caption parses back to a `Scene`.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ..shapes.grammar import COLORS, SHAPES, SIZES, quoted

# Grid cells (column, row) and how a caption names them.
PLACES = {
    "at the top left": (0, 0), "at the top": (1, 0), "at the top right": (2, 0),
    "on the left": (0, 1), "in the center": (1, 1), "on the right": (2, 1),
    "at the bottom left": (0, 2), "at the bottom": (1, 2), "at the bottom right": (2, 2),
}
BACKGROUNDS = ("plain", "striped", "checkered")
MIN_OBJECTS, MAX_OBJECTS = 2, 4


@dataclass(frozen=True)
class Item:
    color: str
    shape: str
    size: str
    place: str


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    background: str = "plain"


def caption(scene: Scene) -> str:
    parts = [f"a {i.size} {i.color} {i.shape} {i.place}" for i in scene.items]
    objects = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{objects}, on a {scene.background} background"


_ITEM = re.compile(rf"^a ({'|'.join(SIZES)}) (\w+) ({'|'.join(SHAPES)}) ({'|'.join(PLACES)})$")


def parse(text: str) -> Scene:
    """The scene a caption of this grammar describes; ValueError (saying what is allowed) otherwise."""
    text = " ".join(text.lower().split())
    example = ("expected e.g. 'a large red circle at the top left and a small blue square in the center, "
               "on a plain background'")
    m = re.match(r"^(.*), on a (\w+) background$", text)
    if not m:
        raise ValueError(f"caption {quoted(text)} is outside the scenes grammar; {example}")
    objects, background = m[1], m[2]
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r} in {quoted(text)}; allowed: {', '.join(BACKGROUNDS)}")
    head, _, last = objects.rpartition(" and ")
    parts = [p.strip() for p in head.split(",")] + [last] if head else [objects]
    items = []
    for part in parts:
        if not (im := _ITEM.match(part)):
            raise ValueError(f"object {part!r} of {quoted(text)} is outside the scenes grammar; {example}")
        if im[2] not in COLORS:
            raise ValueError(f"unknown colour {im[2]!r} in {quoted(text)}; allowed: {', '.join(COLORS)}")
        items.append(Item(im[2], im[3], im[1], im[4]))
    if not MIN_OBJECTS <= len(items) <= MAX_OBJECTS:
        raise ValueError(f"{quoted(text)} has {len(items)} objects; allowed: {MIN_OBJECTS} to {MAX_OBJECTS}")
    if len({i.color for i in items}) < len(items) or len({i.place for i in items}) < len(items):
        raise ValueError(f"the objects of {quoted(text)} must have different colours and different places")
    return Scene(tuple(items), background)


def vocabulary() -> list[str]:
    """Every word a caption can use."""
    words = {"a", "and", "on", "background", *COLORS, *SHAPES, *SIZES, *BACKGROUNDS}
    for place in PLACES:
        words.update(place.split())
    return sorted(words)


def is_heldout(scene: Scene) -> bool:
    """A fixed ~8% of captions, chosen by a hash, never used in training."""
    return hashlib.sha256(caption(scene).encode()).digest()[0] < 20


def random_scene(rng: random.Random) -> Scene:
    n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    colors = rng.sample(list(COLORS), n)
    places = rng.sample(list(PLACES), n)
    items = tuple(Item(c, rng.choice(SHAPES), rng.choice(SIZES), p) for c, p in zip(colors, places))
    return Scene(items, rng.choice(BACKGROUNDS))


def sample_scenes(split: str, n: int, seed: int) -> list[Scene]:
    """n random scenes of one split ("train" or "heldout"), balanced over 2, 3 and 4 objects."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; allowed: train, heldout")
    rng = random.Random(seed)
    out: list[Scene] = []
    while len(out) < n:
        scene = random_scene(rng)
        if len(scene.items) == MIN_OBJECTS + len(out) % (MAX_OBJECTS - MIN_OBJECTS + 1) and \
                is_heldout(scene) == (split == "heldout"):
            out.append(scene)
    return out
