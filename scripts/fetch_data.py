"""Fetch the prompt sets once, so later runs work offline.

    python scripts/fetch_data.py parti coco                 # hub dataset repos, huggingface_hub cache
    python scripts/fetch_data.py parti coco --source file   # canonical files, ~/.cache/cat-pruning
"""

from __future__ import annotations

import argparse
import io
import urllib.request
import zipfile
from pathlib import Path

from experiments.prompts.sets import COCO_URL, PARTI_URL, cache_dir, load_prompts


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
    p.add_argument("--source", choices=["hub", "file"], default="hub")
    p.add_argument("--dest", type=Path, default=cache_dir(), help="where --source file keeps the files")
    args = p.parse_args(argv)
    for name in args.sets:
        if args.source == "hub":
            prompts = load_prompts({"coco": "coco2017"}.get(name, name), source="hub")
            print(f"{name}: {len(prompts)} prompts in the huggingface_hub cache")
            continue
        args.dest.mkdir(parents=True, exist_ok=True)
        path = (fetch_parti if name == "parti" else fetch_coco)(args.dest)
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
