"""Prompt sets: PartiPrompts, COCO2017 val captions and the bundled shapes prompts.

Each loader reads a local file when one is given, else a cached copy, else downloads the canonical
file once into the cache. A prompt set is a list of `Prompt(index, text, meta)`; `index` is the global
position in the full set and seeds that prompt's generator, so results do not depend on batch size,
subset or sharding.
"""

from __future__ import annotations

import csv
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PARTI_URL = "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv"
COCO_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


def cache_dir() -> Path:
    return Path(os.environ.get("CAT_PRUNING_CACHE", Path.home() / ".cache" / "cat-pruning"))


def _fetch(url: str, dest: Path, how: str) -> Path:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CAT_PRUNING_OFFLINE") == "1":
        raise FileNotFoundError(f"{dest} is missing and the network is off; {how}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as err:
        raise FileNotFoundError(f"could not download {url} to {dest} ({err}); {how}") from err
    tmp.replace(dest)
    return dest


def parti_prompts(path: str | None = None) -> list[Prompt]:
    """The 1632 PartiPrompts with their Category and Challenge."""
    file = Path(path) if path else cache_dir() / "PartiPrompts.tsv"
    if not file.exists():
        if path:
            raise FileNotFoundError(f"PartiPrompts file {file} does not exist")
        _fetch(PARTI_URL, file, "run `python scripts/fetch_data.py parti` with network access, "
                                 "or set data.path to a local PartiPrompts.tsv")
    with open(file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [Prompt(i, r["Prompt"], {"category": r["Category"], "challenge": r["Challenge"]}) for i, r in enumerate(rows)]


def coco_captions(path: str | None = None) -> list[Prompt]:
    """COCO2017 val: the first caption (lowest annotation id) of each of the 5000 images, by image id."""
    file = Path(path) if path else cache_dir() / "captions_val2017.json"
    if not file.exists():
        if path:
            raise FileNotFoundError(f"COCO captions file {file} does not exist")
        raise FileNotFoundError(
            f"{file} is missing: run `python scripts/fetch_data.py coco` (downloads {COCO_URL} once), "
            "or set data.path to a local captions_val2017.json"
        )
    data = json.loads(file.read_text())
    first: dict[int, dict] = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        first.setdefault(ann["image_id"], ann)
    names = {img["id"]: img["file_name"] for img in data["images"]}
    return [Prompt(i, first[image_id]["caption"].strip(), {"image_id": image_id, "file_name": names.get(image_id)})
            for i, image_id in enumerate(sorted(first))]


def shapes_prompts(path: str | None = None) -> list[Prompt]:
    from .shapes import load_prompts

    texts = [t.strip() for t in Path(path).read_text().splitlines() if t.strip()] if path else load_prompts()
    return [Prompt(i, t) for i, t in enumerate(texts)]


LOADERS = {"parti": parti_prompts, "coco2017": coco_captions, "shapes": shapes_prompts}


def load_prompts(name: str, path: str | None = None, limit: int | None = None, categories=None,
                 shard: int = 0, num_shards: int = 1) -> list[Prompt]:
    """A prompt set, filtered by category, cut to `limit` and split into shards (by global index)."""
    if name not in LOADERS:
        raise ValueError(f"data.name={name!r} is invalid; allowed: {', '.join(LOADERS)}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"data.shard={shard} must be in [0, data.num_shards={num_shards})")
    prompts = LOADERS[name](path)
    if categories:
        prompts = [p for p in prompts if p.meta.get("category") in set(categories)]
    if limit is not None:
        prompts = prompts[:limit]
    return prompts[shard::num_shards]
