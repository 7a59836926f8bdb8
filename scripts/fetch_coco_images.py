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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=Path.home() / ".cache" / "cat-pruning" / "coco_val2017")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N images (sorted by file name)")
    args = p.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    print(f"downloading {VAL_IMAGES_URL} (~780 MB) ...")
    with urllib.request.urlopen(VAL_IMAGES_URL) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[: args.limit]
    for name in names:
        (args.dest / Path(name).name).write_bytes(archive.read(name))
    print(f"{len(names)} images in {args.dest}")


if __name__ == "__main__":
    main()
