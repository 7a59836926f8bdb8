"""Carry a sweep's records to another machine without its images, and resume it there.

    python scripts/sweep_carry.py pack outputs/sweeps/peers-tiny_sd3_scenes carry/   # on the first machine
    python scripts/sweep_carry.py unpack carry/                                      # on the next (into ./outputs)
    python run.py sweep=peers model=tiny_sd3_scenes                                  # resumes where it stopped

A sweep's images are most of its size (a scored setting on 32 prompts of the scene model: about 400 KB of PNG,
a few KB of values) and nothing reads a setting's images once it is scored. `pack` copies every other file of
the sweep folder (each cell's status, metrics, plan, per-prompt values, calibration rows and logs) and of the
full model's caches of the sweep's model beside it (`<output_root>/full_images/<model>-*`, with their
`-settings` rows), leaving out the settings' images (`*.png`), locks, a writer's temporaries, symlinks and the
interim report, and writes
`CARRY.json` (what it holds, when, by which code). The full model's own images are carried (one per prompt,
about 15 KB each on the scene model): every carried row was scored against them, and a setting scored after the
unpack is scored against the same images, not against ones generated again on another CPU, which could differ in
their last bits. `unpack` copies those files into an output root (default
`outputs`, the one `run.py` writes to from this directory), never over a file that is there.

Rerunning the sweep's command then skips its finished cells, and an unfinished cell reuses every setting it
(or another cell) had scored: a row is written only after its images, so a row without images is a carried one
and `experiments.compare.bench.Bench` takes its values as measured. What is computed again: the first batch
of a setting a knob search had only measured. The run key includes the code: on a checkout whose code differs
from the one in `CARRY.json`, the finished cells are reused only with `reuse_other_code=true` and the
calibration rows not at all (`unpack` says so); carry between checkouts of the same commit, with the same
torch, diffusers and transformers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/sweep_carry.py` from anywhere
    sys.path.insert(0, str(ROOT))

from experiments.base.files import TMP_SUFFIX, read_json, write_json  # noqa: E402
from experiments.reports.sweeps import INTERIM  # noqa: E402
from experiments.run.keys import code_identity  # noqa: E402
from experiments.run.provenance import provenance  # noqa: E402

CARRY = "CARRY.json"
LEFT_OUT = (".png",)  # images: recomputed or not needed once a setting is scored
SKIP_NAMES = {".lock"}
SKIP_DIRS = {"wandb"}  # a run's offline W&B log: git ignores it, and resuming never reads it


def full_model_images(folder: str | Path) -> bool:
    """Whether a carried folder is a full model's image cache (`full_images/<model>-<key>`), whose images are
    carried, rather than its settings' rows (`-settings`) or a sweep."""
    folder = Path(folder)
    return folder.parent.name == "full_images" and not folder.name.endswith("-settings")


def _files(folder: Path, skip_dirs: set[Path] = frozenset(), images: bool = False):
    """The regular files under `folder` a carry holds, relative to it (with its images where `images`)."""
    for path in sorted(folder.rglob("*")):
        if any(parent in skip_dirs for parent in path.parents) or path in skip_dirs:
            continue
        if path.is_symlink() or not path.is_file() or SKIP_DIRS & set(path.relative_to(folder).parts[:-1]):
            continue
        if (path.suffix.lower() in LEFT_OUT and not images) or path.name in SKIP_NAMES \
                or path.name.endswith(TMP_SUFFIX):
            continue
        yield path.relative_to(folder)


def sweep_model(sweep_dir: Path) -> str:
    config = sweep_dir / "multirun.yaml"
    if not config.is_file():
        raise SystemExit(f"{sweep_dir}: no multirun.yaml (not a sweep folder, or a sweep that never started)")
    try:
        name = OmegaConf.select(OmegaConf.load(config), "model.name")
    except Exception as err:  # not YAML, or not a mapping
        text = " ".join(str(err).split())[:200]
        raise SystemExit(f"{config}: unreadable ({type(err).__name__}: {text}); Hydra writes it when the sweep "
                         "starts") from None
    if not name:
        raise SystemExit(f"{config}: no model.name")
    return str(name)


def check_dest(dest: Path, output_root: Path) -> None:
    """A carry's folder is a folder (or not there yet) apart from the output root: one inside it would be read
    as runs there (make_tables), and one holding it would be replaced with the sweep in it."""
    if dest.exists() and not dest.is_dir():
        raise SystemExit(f"{dest}: a file; pack into a new or empty folder (or an earlier carry, which it replaces)")
    where = dest.resolve()
    if where == output_root or output_root in where.parents or where in output_root.parents:
        raise SystemExit(f"{dest}: inside or around the output root {output_root}; pack into a folder apart from "
                         "it, e.g. carry/")


def pack(sweep_dir: Path, dest: Path) -> dict:
    """Copies the sweep's records and its model's full-model caches into `dest` (replacing an earlier carry
    there), the settings' images left out; returns the manifest."""
    sweep_dir = sweep_dir.resolve()
    if sweep_dir.parent.name != "sweeps":
        raise SystemExit(f"{sweep_dir}: not a sweep folder (expected <output_root>/sweeps/<group>-<model>)")
    model = sweep_model(sweep_dir)
    output_root = sweep_dir.parent.parent
    check_dest(dest, output_root)
    if dest.exists() and any(dest.iterdir()) and not (dest / CARRY).is_file():
        raise SystemExit(f"{dest}: exists and holds no {CARRY}; pack into a new or empty folder (or an earlier "
                         "carry, which it replaces)")
    if dest.exists():
        shutil.rmtree(dest)
    trees = [sweep_dir] + sorted(p for p in (output_root / "full_images").glob(f"{model}-*") if p.is_dir())
    count = size = 0
    for tree in trees:
        for rel in _files(tree, {tree / INTERIM} if tree == sweep_dir else set(), full_model_images(tree)):
            target = dest / tree.relative_to(output_root) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / rel, target)
            count += 1
            size += target.stat().st_size
    cell_code: dict[str, int] = {}  # the code that made the sweep's cells (run_key.json), by SHA-256
    for recorded in sorted(sweep_dir.glob("*/run_key.json")):
        code = ((read_json(recorded) or {}).get("material") or {}).get("code") or {}
        if code.get("sha256"):
            cell_code[code["sha256"]] = cell_code.get(code["sha256"], 0) + 1
    manifest = {"sweep": str(sweep_dir.relative_to(output_root)), "model": model, "cell_code": cell_code,
                "folders": [str(t.relative_to(output_root)) for t in trees], "files": count, "bytes": size,
                "left_out": "the sweep's and the settings' images (*.png; the full model's are carried), locks, "
                            "temporaries, symlinks, the interim report",
                "packed": dt.datetime.now().isoformat(timespec="seconds"), "code": code_identity(),
                "provenance": provenance()}
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / CARRY, manifest)
    return manifest


def unpack(carry: Path, output_root: Path) -> tuple[dict, int, int]:
    """Copies a carry's files into `output_root`, none over an existing file; returns (manifest, copied,
    already there)."""
    manifest = read_manifest(carry)
    if output_root.exists() and not output_root.is_dir():
        raise SystemExit(f"--output-root {output_root}: a file; give the output root folder run.py writes to "
                         "(default outputs)")
    files = [(folder, rel) for folder in manifest["folders"] if (carry / folder).is_dir()
             for rel in _files(carry / folder, images=full_model_images(folder))]
    if isinstance(manifest.get("files"), int) and len(files) < manifest["files"]:
        print(f"warning: {carry} holds {len(files)} of the {manifest['files']} files it was packed with (an "
              "incomplete copy?): what is missing is computed again", file=sys.stderr)
    copied = kept = 0
    for folder, rel in files:
        target = output_root / folder / rel
        if target.exists():
            kept += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(carry / folder / rel, target)
        copied += 1
    return manifest, copied, kept


def read_manifest(carry: Path) -> dict:
    """A carry's CARRY.json as `pack` writes it (its sweep, when it was packed, by which code, and its folders:
    sweeps/<name> and full_images/<name> of an output root, nothing outside it)."""
    try:
        manifest = json.loads((carry / CARRY).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{carry}: not a carry ({CARRY} unreadable: {err}); make one with `pack`") from None
    folders = manifest.get("folders") if isinstance(manifest, dict) else None
    if not (isinstance(folders, list) and all(isinstance(f, str) for f in folders)
            and all(isinstance(manifest.get(k), str) for k in ("sweep", "packed"))
            and isinstance(manifest.get("code"), dict) and isinstance(manifest["code"].get("sha256"), str)):
        raise SystemExit(f"{carry / CARRY}: not a carry's manifest (it needs sweep, packed, code.sha256 and a list "
                         "of folders); make one with `pack`")
    for folder in folders:  # relative folders of an output root, nothing outside it
        if Path(folder).is_absolute() or ".." in Path(folder).parts:
            raise SystemExit(f"{carry / CARRY}: folder {folder!r} is outside an output root; a carry holds "
                             "sweeps/<name> and full_images/<name> only")
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="a sweep's records (no images) into a carry folder")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("dest", type=Path)
    u = sub.add_parser("unpack", help="a carry folder's records into an output root")
    u.add_argument("carry", type=Path)
    u.add_argument("--output-root", type=Path, default=Path("outputs"))
    args = parser.parse_args(argv)
    if args.command == "pack":
        m = pack(args.sweep_dir, args.dest)
        print(f"packed {m['sweep']} and {len(m['folders']) - 1} full-model cache(s) of {m['model']}: {m['files']} "
              f"files, {m['bytes'] / 1e6:.1f} MB, into {args.dest} (the settings' images left out, the full "
              "model's carried)")
        if m["cell_code"] and m["code"]["sha256"] not in m["cell_code"]:
            print(f"warning: this checkout's code ({m['code']['sha256'][:12]}) made none of the sweep's cells "
                  f"({', '.join(c[:12] for c in m['cell_code'])}): CARRY.json names this checkout's commit; pack "
                  "from the checkout the sweep runs from")
        return
    manifest, copied, kept = unpack(args.carry, args.output_root)
    print(f"unpacked {manifest['sweep']} ({manifest['packed']}) into {args.output_root}: {copied} files copied, "
          f"{kept} already there (kept)")
    here = code_identity()
    made_by = manifest.get("cell_code") or {manifest["code"]["sha256"]: 0}
    differs = ["sha256"] if here["sha256"] not in made_by else []
    differs += [k for k in ("torch", "diffusers", "transformers") if here.get(k) != manifest["code"].get(k)]
    if differs:
        commit = (manifest.get("provenance") or {}).get("git_sha") or "the commit it was packed on"
        print(f"warning: the carry was made by other code ({', '.join(differs)} differ): rerunning the sweep reuses "
              f"its finished cells only with reuse_other_code=true, and none of its calibration rows; run the sweep "
              f"from a checkout of {commit} with torch {manifest['code'].get('torch')}, diffusers "
              f"{manifest['code'].get('diffusers')} and transformers {manifest['code'].get('transformers')}")

if __name__ == "__main__":
    main()
