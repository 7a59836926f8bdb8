"""Fetch the COCO2017 val images (the FID reference set) once.

    python scripts/fetch_coco_images.py --dest ~/.cache/cat-pruning/coco_val2017 [--limit 5000]

Then run with metrics=paper and COCO_VAL2017_DIR pointing at the folder (or metrics.fid.reference=...).
"""

from __future__ import annotations

import argparse
import io
import urllib.request
import zipfile
from pathlib import Path

VAL_IMAGES_URL = "http://images.cocodataset.org/zips/val2017.zip"


def check(dest: Path, limit: int | None) -> None:
    """The options, before the 780 MB download: a count of at least one image, and a folder to keep them in."""
    if limit is not None and limit < 1:
        raise SystemExit(f"--limit {limit} is invalid; allowed: an integer >= 1 (or leave it out: all 5000 images)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file there, or above it
        raise SystemExit(f"--dest {dest}: cannot be a folder ({err.strerror or err}); give a folder to keep the "
                         "images in") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=Path.home() / ".cache" / "cat-pruning" / "coco_val2017")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N images (sorted by file name)")
    args = p.parse_args(argv)
    check(args.dest, args.limit)
    print(f"downloading {VAL_IMAGES_URL} (~780 MB) ...")
    try:
        with urllib.request.urlopen(VAL_IMAGES_URL) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except (OSError, zipfile.BadZipFile) as err:
        raise SystemExit(f"error: could not fetch {VAL_IMAGES_URL} ({type(err).__name__}: {err}); retry with "
                         "network access") from None
    names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[: args.limit]
    for name in names:
        part = args.dest / (Path(name).name + ".part")  # an interrupted write leaves no truncated image
        part.write_bytes(archive.read(name))
        part.replace(args.dest / Path(name).name)
    print(f"{len(names)} images in {args.dest}")

if __name__ == "__main__":
    main()
