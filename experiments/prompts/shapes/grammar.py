"""A small caption grammar of coloured shapes, and the scenes it describes.

Captions come in three forms:
- "a large red circle on the left"                     (one object, a place)
- "a small blue square above a large green triangle"   (two objects, a relation)
- "three yellow circles"                               (two or three objects of one kind)
Every caption parses back to a `Scene`; the renderer draws scenes and the judge checks images
against them.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
RELATIONS = ("above", "below", "left of", "right of")
COUNTS = {"two": 2, "three": 3}


def quoted(text: str, limit: int = 80) -> str:
    """`text` as an error message shows it: quoted, and cut to `limit` characters (a prompt file's line may be
    a whole book)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class Thing:
    color: str
    shape: str
    size: str | None = None  # None: unspecified (counted objects are small)


@dataclass(frozen=True)
class Scene:
    """What a caption asks for: the objects, and where they are."""

    kind: str  # "place" | "relation" | "count"
    things: tuple[Thing, ...]
    place: str | None = None
    relation: str | None = None
    count: int = 1


def caption(scene: Scene) -> str:
    if scene.kind == "place":
        t = scene.things[0]
        return f"a {t.size} {t.color} {t.shape} {scene.place}"
    if scene.kind == "relation":
        a, b = scene.things
        return f"a {a.size} {a.color} {a.shape} {scene.relation} a {b.size} {b.color} {b.shape}"
    t = scene.things[0]
    word = next(w for w, n in COUNTS.items() if n == scene.count)
    return f"{word} {t.color} {t.shape}s"


_THING = r"(small|large) (\w+) (circle|square|triangle)"
_PLACE_RE = re.compile(rf"^a {_THING} ({'|'.join(PLACES)})$")
_RELATION_RE = re.compile(rf"^a {_THING} ({'|'.join(RELATIONS)}) a {_THING}$")
_COUNT_RE = re.compile(r"^(two|three) (\w+) (circle|square|triangle)s$")


def parse(text: str) -> Scene:
    """The scene a caption of this grammar describes; ValueError for anything else."""
    text = " ".join(text.lower().split())
    if m := _PLACE_RE.match(text):
        scene = Scene("place", (Thing(m[2], m[3], m[1]),), place=m[4])
    elif m := _RELATION_RE.match(text):
        scene = Scene("relation", (Thing(m[2], m[3], m[1]), Thing(m[6], m[7], m[5])), relation=m[4])
    elif m := _COUNT_RE.match(text):
        scene = Scene("count", (Thing(m[2], m[3]),), count=COUNTS[m[1]])
    else:
        raise ValueError(
            f"caption {quoted(text)} is outside the shapes grammar; expected e.g. 'a large red circle on the left', "
            "'a small blue square above a large green triangle' or 'three yellow circles'"
        )
    for thing in scene.things:
        if thing.color not in COLORS:
            raise ValueError(f"unknown colour {thing.color!r} in {quoted(text)}; allowed: {', '.join(COLORS)}")
    if scene.kind == "relation" and scene.things[0].color == scene.things[1].color:
        raise ValueError(f"the two objects of {quoted(text)} must have different colours")
    return scene


def all_scenes() -> list[Scene]:
    """Every scene of the grammar (objects of a relation have different colours)."""
    things = [Thing(c, s, z) for c in COLORS for s in SHAPES for z in SIZES]
    scenes = [Scene("place", (t,), place=p) for t in things for p in PLACES]
    scenes += [
        Scene("relation", (a, b), relation=r)
        for a, b in itertools.product(things, things)
        if a.color != b.color
        for r in RELATIONS
    ]
    scenes += [Scene("count", (Thing(c, s),), count=n) for c in COLORS for s in SHAPES for n in COUNTS.values()]
    return scenes


def is_heldout(scene: Scene) -> bool:
    """A fixed ~8% of captions, chosen by a hash, never used in training."""
    digest = hashlib.sha256(caption(scene).encode()).digest()
    return digest[0] < 20


def split(name: str) -> list[Scene]:
    if name not in ("train", "heldout"):
        raise ValueError(f"unknown split {name!r}; allowed: train, heldout")
    return [s for s in all_scenes() if is_heldout(s) == (name == "heldout")]


def sample_scenes(scenes: list[Scene], n: int, seed: int) -> list[Scene]:
    """n scenes, balanced over the three caption forms."""
    rng = random.Random(seed)
    by_kind = {k: [s for s in scenes if s.kind == k] for k in ("place", "relation", "count")}
    kinds = [k for k in by_kind if by_kind[k]]
    return [rng.choice(by_kind[kinds[i % len(kinds)]]) for i in range(n)]
