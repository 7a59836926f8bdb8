"""Fetch the prompt sets once into the cache (~/.cache/cat-pruning or $CAT_PRUNING_CACHE).

    python scripts/fetch_data.py parti coco
"""

from __future__ import annotations

import argparse
import io
import sys
import urllib.request
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.data import COCO_URL, PARTI_URL, cache_dir  # noqa: E402


def fetch_parti(dest: Path) -> Path:
    target = dest / "PartiPrompts.tsv"
    urllib.request.urlretrieve(PARTI_URL, target)
    return target


def fetch_coco(dest: Path) -> Path:
    """captions_val2017.json from the COCO annotations archive (~250 MB download, one file kept)."""
    target = dest / "captions_val2017.json"
    with urllib.request.urlopen(COCO_URL) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    target.write_bytes(archive.read("annotations/captions_val2017.json"))
    return target


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", choices=["parti", "coco"])
    p.add_argument("--dest", type=Path, default=cache_dir())
    args = p.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        path = (fetch_parti if name == "parti" else fetch_coco)(args.dest)
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
