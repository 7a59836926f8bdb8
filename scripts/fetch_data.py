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

from experiments.base.config_files import Unavailable
from experiments.prompts.sets import COCO_URL, PARTI_URL, cache_dir, load_prompts


def fetch_parti(dest: Path) -> Path:
    target = dest / "PartiPrompts.tsv"
    part = target.with_name(target.name + ".part")  # an interrupted download never reads as a shorter set
    urllib.request.urlretrieve(PARTI_URL, part)
    part.replace(target)
    return target


def fetch_coco(dest: Path) -> Path:
    """captions_val2017.json from the COCO annotations archive (~250 MB download, one file kept)."""
    target = dest / "captions_val2017.json"
    with urllib.request.urlopen(COCO_URL) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    part = target.with_name(target.name + ".part")
    part.write_bytes(archive.read("annotations/captions_val2017.json"))
    part.replace(target)
    return target


def fetched(name: str, source: str, dest: Path) -> str:
    """What `name` was fetched as: its prompt count in the huggingface_hub cache, or its file under `dest`; a
    download that fails is one line saying why."""
    try:
        if source == "hub":
            return f"{len(load_prompts({'coco': 'coco2017'}.get(name, name), source='hub'))} prompts in the " \
                   "huggingface_hub cache"
        return str((fetch_parti if name == "parti" else fetch_coco)(dest))
    except (Unavailable, ImportError) as err:  # not fetchable now (with how to get it), or pyarrow missing
        raise SystemExit(f"error: {err}") from None
    except (OSError, zipfile.BadZipFile, KeyError) as err:  # network, disk, or an archive without the file
        url = PARTI_URL if name == "parti" else COCO_URL
        raise SystemExit(f"error: could not fetch {name} from {url} into {dest} ({type(err).__name__}: {err}); "
                         "retry with network access, or use --source hub") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", choices=["parti", "coco"])
    p.add_argument("--source", choices=["hub", "file"], default="hub")
    p.add_argument("--dest", type=Path, default=cache_dir(), help="where --source file keeps the files")
    args = p.parse_args(argv)
    if args.source == "file":
        try:
            args.dest.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file there, or above it
            raise SystemExit(f"--dest {args.dest}: cannot be a folder ({err.strerror or err}); give a folder to keep "
                             "the prompt files in") from None
    for name in args.sets:
        print(f"{name}: {fetched(name, args.source, args.dest)}")


if __name__ == "__main__":
    main()
