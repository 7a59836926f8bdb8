"""Prompt sets: PartiPrompts, COCO2017 val captions and the bundled shapes and scenes prompts (packages beside
this module, each with its grammar and weight-free judge).

Each loader reads a local file when one is given (`data.path`); otherwise it downloads the set once
and reads the cached copy, from the Hugging Face hub (`data.source=hub`, the default: the dataset repos
`nateraw/parti-prompts` and `phiyodr/coco2017`, cached by huggingface_hub, `HF_TOKEN` honoured) or from
the canonical file (`data.source=file`: PartiPrompts.tsv from the Parti repository, captions_val2017.json
from the COCO annotations, cached in ~/.cache/cat-pruning). A prompt set is a list of
`Prompt(index, text, meta)`; `index` is the global position in the full set and seeds that prompt's
generator, so results do not depend on batch size, subset or sharding. Files are read as UTF-8 (`ENCODING`).
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..base.config_files import Unavailable

PARTI_URL = "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv"
COCO_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
PARTI_HUB = ("nateraw/parti-prompts", "PartiPrompts.tsv")
COCO_HUB = ("phiyodr/coco2017", "data/validation-*.parquet")
SOURCES = ("hub", "file")
# Prompt files are UTF-8 whatever the locale; a byte-order mark (which some editors write) is dropped, not made
# part of the first prompt.
ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


def cache_dir() -> Path:
    return Path(os.environ.get("CAT_PRUNING_CACHE", Path.home() / ".cache" / "cat-pruning"))


def _fetch(url: str, dest: Path, how: str) -> Path:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CAT_PRUNING_OFFLINE") == "1":
        raise Unavailable(f"{dest} is missing and the network is off; {how}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as err:
        raise Unavailable(f"could not download {url} to {dest} ({err}); {how}") from err
    tmp.replace(dest)
    return dest


def _from_hub(repo: str, pattern: str, how: str) -> list[Path]:
    """Files of a hub dataset repo matching `pattern`, downloaded once into the huggingface_hub cache."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[pattern]))
    except OSError as err:  # huggingface_hub's offline and HTTP errors are OSErrors
        raise Unavailable(f"could not fetch {pattern} of the hub dataset {repo} ({err}); {how}") from err
    files = sorted(folder.glob(pattern))
    if not files:
        raise Unavailable(f"the hub dataset {repo} has no file matching {pattern}; {how}")
    return files


def parti_prompts(path: str | None = None, source: str = "hub") -> list[Prompt]:
    """The 1632 PartiPrompts with their Category and Challenge."""
    how = ("run `python scripts/fetch_data.py parti` with network access, "
           "or set data.path to a local PartiPrompts.tsv")
    if path:
        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(f"PartiPrompts file {file} does not exist")
    elif source == "hub":
        file = _from_hub(*PARTI_HUB, how)[0]
    else:
        file = cache_dir() / "PartiPrompts.tsv"
        if not file.exists():
            _fetch(PARTI_URL, file, how)
    with open(file, newline="", encoding=ENCODING) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [Prompt(i, r["Prompt"], {"category": r["Category"], "challenge": r["Challenge"]}) for i, r in enumerate(rows)]


def _coco_from_parquet(files: list[Path]) -> list[Prompt]:
    """The hub copy: one row per image with its annotation `ids` and `captions`; first = lowest id."""
    import pandas as pd

    try:
        frame = pd.concat([pd.read_parquet(f, columns=["image_id", "file_name", "ids", "captions"]) for f in files])
    except ImportError as err:
        raise ImportError("reading the hub copy of COCO needs pyarrow: `pip install pyarrow` "
                          "(in the `experiments` extra), or use data.source=file") from err
    frame = frame.sort_values("image_id")
    return [Prompt(i, str(caps[min(range(len(ids)), key=lambda k: ids[k])]).strip(),
                   {"image_id": int(image_id), "file_name": name})
            for i, (image_id, name, ids, caps) in enumerate(
                zip(frame.image_id, frame.file_name, frame.ids, frame.captions))]


def coco_captions(path: str | None = None, source: str = "hub") -> list[Prompt]:
    """COCO2017 val: the first caption (lowest annotation id) of each of the 5000 images, by image id."""
    how = (f"run `python scripts/fetch_data.py coco` (downloads {COCO_URL} once) and use data.source=file, "
           "or set data.path to a local captions_val2017.json")
    if path and Path(path).suffix == ".parquet":
        return _coco_from_parquet([Path(path)])
    if not path and source == "hub":
        return _coco_from_parquet(_from_hub(*COCO_HUB, how))
    file = Path(path) if path else cache_dir() / "captions_val2017.json"
    if not file.exists():
        if path:
            raise FileNotFoundError(f"COCO captions file {file} does not exist")
        raise FileNotFoundError(f"{file} is missing: {how}")
    data = json.loads(file.read_text(encoding=ENCODING))
    first: dict[int, dict] = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        first.setdefault(ann["image_id"], ann)
    names = {img["id"]: img["file_name"] for img in data["images"]}
    return [Prompt(i, first[image_id]["caption"].strip(), {"image_id": image_id, "file_name": names.get(image_id)})
            for i, image_id in enumerate(sorted(first))]


def bundled_prompts(package: str):
    """The loader of a grammar package's bundled held-out prompts (`source` is unused: they ship with the
    code); `path` points at another file with one prompt per line instead. Its calibration split is a
    second bundled file (`calibration_split`)."""

    def load(path: str | None = None, source: str = "hub") -> list[Prompt]:
        texts = ([t.strip() for t in Path(path).read_text(encoding=ENCODING).splitlines() if t.strip()] if path
                 else importlib.import_module(f".{package}", __package__).load_prompts())
        return [Prompt(i, t) for i, t in enumerate(texts)]

    load.package = package
    return load


shapes_prompts = bundled_prompts("shapes")  # the default model's
scenes_prompts = bundled_prompts("scenes")  # the 1024-token scene model's


LOADERS = {"parti": parti_prompts, "coco2017": coco_captions, "shapes": shapes_prompts, "scenes": scenes_prompts}
# What a local file (`data.path`) of each set must hold, for error messages.
FORMATS = {"parti": "a PartiPrompts.tsv (tab-separated, with Prompt, Category and Challenge columns)",
           "coco2017": "a COCO captions JSON (captions_val2017.json) or the hub's parquet file",
           None: "a UTF-8 text file with one prompt per line"}


def bundled_package(name: str):
    """The package of a bundled prompt set (`shapes`, `scenes`: its prompt files, its grammar's `parse` and its
    weight-free adherence `judge`), or None for a downloaded set."""
    package = getattr(LOADERS.get(name), "package", None)
    return importlib.import_module(f".{package}", __package__) if package else None


SPLITS = ("evaluation", "calibration")
CALIBRATION_SIZE = 64  # prompts of a downloaded set (PartiPrompts, COCO) kept for calibration and tuning
CALIBRATION_INDEX = 100_000  # first index (and seed) of a bundled calibration file's prompts


def calibration_split(name: str, prompts: list[Prompt], split: str, calibration_path: str | None = None,
                      ) -> list[Prompt]:
    """One split of a prompt set. Methods are tuned and calibrated on `calibration` prompts and evaluated
    on `evaluation` prompts, never on the same ones:

    - the bundled sets (shapes, scenes): evaluation is the held-out file; calibration a second file of
      other held-out captions, indexed from CALIBRATION_INDEX (other seeds, other image names);
    - downloaded sets (PartiPrompts, COCO): calibration is the last CALIBRATION_SIZE prompts of the set
      whose text it holds only once (COCO repeats some captions), evaluation the others (global indices
      kept);
    - `calibration_path`: a file of calibration prompts (one per line) for any set, e.g. beside `data.path`.
    """
    if split not in SPLITS:
        raise ValueError(f"data.split={split!r} is invalid; allowed: {', '.join(SPLITS)}")
    if calibration_path:
        if split == "evaluation":
            return prompts
        texts = [t.strip() for t in Path(calibration_path).read_text(encoding=ENCODING).splitlines() if t.strip()]
        return [Prompt(CALIBRATION_INDEX + i, t) for i, t in enumerate(texts)]
    package = bundled_package(name)
    if package is not None:
        if split == "evaluation":
            return prompts
        texts = package.load_prompts("calibration")
        return [Prompt(CALIBRATION_INDEX + i, t) for i, t in enumerate(texts)]
    counts: dict[str, int] = {}
    for p in prompts:
        counts[p.text] = counts.get(p.text, 0) + 1
    unique = [p.index for p in reversed(prompts) if counts[p.text] == 1]  # a text the set holds once
    chosen = set(unique[:CALIBRATION_SIZE])
    return [p for p in prompts if (p.index in chosen) == (split == "calibration")]


def check_disjoint(evaluation: list[Prompt], calibration: list[Prompt]) -> None:
    """Raises ValueError naming the prompts both sets hold (by text)."""
    shared = sorted({p.text for p in evaluation} & {p.text for p in calibration})
    if shared:
        raise ValueError(f"{len(shared)} calibration prompt(s) are also evaluation prompts, e.g. {shared[0]!r}: "
                         "tune and calibrate on prompts that are never evaluated")


def load_prompts(name: str, path: str | None = None, limit: int | None = None, categories=None,
                 shard: int = 0, num_shards: int = 1, source: str = "hub", split: str = "evaluation",
                 calibration_path: str | None = None) -> list[Prompt]:
    """A prompt set's split (`calibration_split`), filtered by category, cut to `limit` and split into
    shards (by global index)."""
    if name not in LOADERS:
        raise ValueError(f"data.name={name!r} is invalid; allowed: {', '.join(LOADERS)}")
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r} is invalid; allowed: {', '.join(SOURCES)}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"data.shard={shard} must be in [0, data.num_shards={num_shards})")
    prompts = calibration_split(name, LOADERS[name](path, source), split, calibration_path)
    if categories:
        prompts = [p for p in prompts if p.meta.get("category") in set(categories)]
    if limit is not None and limit != -1:  # -1: all prompts
        if limit < -1:
            raise ValueError(f"data.limit={limit} is invalid; allowed: -1 (all prompts), 0 or a positive count")
        prompts = prompts[:limit]
    return prompts[shard::num_shards]


def prompts_of(data) -> list[Prompt]:
    """The prompt list a data config (`conf/data/*.yaml`, a mapping) asks for."""
    return load_prompts(data["name"], data.get("path"), data.get("limit"), data.get("categories"),
                        data.get("shard", 0), data.get("num_shards", 1), data.get("source", "hub"),
                        data.get("split", "evaluation"), data.get("calibration_path"))
