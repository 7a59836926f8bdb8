"""Where a sweep in flight stands, and its report so far.

    python scripts/sweep_status.py outputs/sweeps/peers-tiny_sd3_scenes            # the cells and their state
    python scripts/sweep_status.py outputs/sweeps/peers-tiny_sd3_scenes --report   # and an interim report

The sweep's cells are the combinations of its sweep parameters, read from the `multirun.yaml` Hydra writes
when a sweep starts (and again when it is resumed), expanded as Hydra's basic sweeper expands them; each cell
folder's `.hydra/overrides.yaml` says which cell it is. A cell is

  * done / failed: it ended in this run of the sweep (listed in the sweep's `.cells`, its `status.json` says
    which; a finished cell reused from an earlier run counts as ended);
  * unfinished: a folder changed since the sweep (re)started and without a status: the cell running now, or
    one a kill stopped (rerunning the sweep resumes it);
  * not started: none of the above (folders the cell left in earlier runs of the sweep, e.g. made by other
    code, are counted beside it).

With each the time its log spans in this run of the sweep (from the cell's first line after the sweep's start to
its last), and a rough time left: the cells not done at the mean time of the cells done whole in this run.
`--report` writes the sweep's report over the done cells (the same
`write_summary` the sweep runs when it ends: summary, trends, targets.csv/md, leaders.csv, figures) into
`<sweep>/interim/` (symlinks to the cells, and `INTERIM.md` saying which cells it holds and when); the sweep's own
report, at its end, is unaffected, and `scripts/make_tables.py` leaves `interim/` out. A sweep made by another
sweeper than Hydra's basic one (no `hydra.sweeper.params` it can expand) lists its folders only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/sweep_status.py` from anywhere
    sys.path.insert(0, str(ROOT))

from experiments.lifecycle import resolvers  # noqa: E402,F401  (the resolvers a sweep's parameters use)
from experiments.reports.sweeps import INTERIM, MANIFEST, write_summary  # noqa: E402

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")  # a log line's time (conf/hydra/default.yaml)


@dataclass
class Cell:
    overrides: tuple[str, ...]  # as the cell's job received them
    state: str = "not started"  # done | failed | unfinished | not started
    folder: Path | None = None
    error: str = ""
    seconds: float | None = None
    earlier: list[Path] = field(default_factory=list)  # folders of this cell from earlier runs of the sweep
    whole: bool = False  # computed entirely in this run of the sweep (neither resumed nor reused)


def planned_cells(config) -> list[tuple[str, ...]] | None:
    """Every cell of the sweep as the override strings its job gets (Hydra's basic sweeper: the sweep file's
    `hydra.sweeper.params`, then the command line's overrides, a later key replacing an earlier one, crossed),
    or None where the sweep was not made by that sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = OmegaConf.to_container(sweeper.get("params") or {}, resolve=True)
    lines = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(config, "hydra.overrides.task") or [])
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)
    return [tuple(cell) for cell in batch]


REUSED = ("is already done", "reused as asked")  # runs.py's lines for a cell that computed nothing


def read_log(folder: Path, since: dt.datetime) -> tuple[float | None, bool]:
    """The seconds the cell's run.log spans at or after `since` (None: no line), and whether the cell computed all
    of it then (no line before `since`, none saying it reused finished results)."""
    path = folder / "run.log"
    if not path.exists():
        return None, False
    stamps, earlier, reused = [], False, False
    for line in path.read_text(errors="replace").splitlines():
        if m := STAMP.match(line):
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            if t < since:
                earlier = True
            else:
                stamps.append(t)
                reused = reused or any(r in line for r in REUSED)
    if not stamps:
        return None, False
    return (stamps[-1] - stamps[0]).total_seconds(), not earlier and not reused


def one_line(err: Exception) -> str:
    """An error as one line (a YAML error spans several), cut to 200 characters."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def read_overrides(path: Path) -> frozenset | None:
    """A cell's `.hydra/overrides.yaml` (a list of override strings), or None when it is unreadable (named)."""
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as err:
        overrides = err
    if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
        return frozenset(overrides)
    what = one_line(overrides) if isinstance(overrides, Exception) else "not a list of overrides"
    print(f"warning: {path} is unreadable ({what}); its folder is left out of the cells", file=sys.stderr)
    return None


def cell_folders(sweep_dir: Path) -> dict[frozenset, list[Path]]:
    """The sweep's cell folders by their overrides (a cell may have several: runs by other code)."""
    found: dict[frozenset, list[Path]] = {}
    for path in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        folder = path.parent.parent
        if folder.name == INTERIM or (overrides := read_overrides(path)) is None:
            continue
        found.setdefault(overrides, []).append(folder)
    return found


def read_status(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def status(sweep_dir: Path) -> tuple[list[Cell], dt.datetime, bool]:
    """The sweep's cells with their state, when this run of the sweep started, and whether the cells are the
    planned ones (False: the sweeper's parameters could not be expanded; every folder is listed)."""
    config_path = sweep_dir / "multirun.yaml"
    if not config_path.exists():
        inside = sorted(p.parent.name for p in sweep_dir.glob("*/multirun.yaml"))
        hint = f"; the sweeps in it: {', '.join(inside)}" if inside else ""
        raise SystemExit(f"{sweep_dir}: no multirun.yaml (not a sweep folder, or a sweep that never started){hint}")
    started = dt.datetime.fromtimestamp(config_path.stat().st_mtime).replace(microsecond=0)
    try:
        planned = planned_cells(OmegaConf.load(config_path))
    except Exception as err:  # a resolver or sweep syntax this process cannot read: the folders alone
        print(f"{sweep_dir}: its sweep parameters could not be expanded ({one_line(err)})", file=sys.stderr)
        planned = None
    folders = cell_folders(sweep_dir)
    ended = set((sweep_dir / MANIFEST).read_text().split()) if (sweep_dir / MANIFEST).exists() else set()
    keys = [frozenset(p) for p in planned] if planned is not None else list(folders)
    cells = []
    for key, overrides in zip(keys, planned or [tuple(sorted(k)) for k in keys]):
        cell = Cell(overrides)
        mine = folders.get(key, [])
        for folder in sorted(mine, key=lambda f: f.stat().st_mtime, reverse=True):
            state = read_status(folder)
            if folder.name in ended:
                cell.state = "done" if state.get("status") == "done" else "failed"
                cell.folder, cell.error = folder, str(state.get("error", "")) if state else "no readable status.json"
                break
            if not state and dt.datetime.fromtimestamp(folder.stat().st_mtime) >= started:
                cell.state, cell.folder = "unfinished", folder
                break
        cell.earlier = [f for f in mine if f != cell.folder]
        if cell.folder is not None:
            cell.seconds, cell.whole = read_log(cell.folder, started)
        cells.append(cell)
    return cells, started, planned is not None


def remaining(cells: list[Cell]) -> str | None:
    """A rough time left: the cells not done, at the mean time of the done cells computed whole in this run of the
    sweep (a crossed sweep's cells left hold about the mix of the cells done; cells differ a lot: a guide, not a
    promise). None before two such cells."""
    whole = [c.seconds for c in cells if c.state == "done" and c.whole and c.seconds is not None]
    left = [c for c in cells if c.state in ("unfinished", "not started")]
    if len(whole) < 2 or not left:
        return None
    mean = sum(whole) / len(whole)
    seconds = sum(max(0.0, mean - (c.seconds or 0.0)) if c.state == "unfinished" else mean for c in left)
    return (f"  about {dt.timedelta(seconds=int(seconds))} left for {len(left)} cell(s) at the mean of the {len(whole)} "
            f"done in this run ({dt.timedelta(seconds=int(mean))} each; cells differ: a rough guide)")


def interim_report(sweep_dir: Path, cells: list[Cell], reference: str | None, contrast: dict | None) -> Path:
    """The sweep's report over its done cells, in `<sweep>/interim/`."""
    out = sweep_dir / INTERIM
    out.mkdir(exist_ok=True)
    for old in out.iterdir():  # the last interim report's links, files and folders (its figures)
        if old.is_symlink() or old.is_file():
            old.unlink()
        elif old.is_dir():
            shutil.rmtree(old)
    done = [c.folder for c in cells if c.state == "done"]
    for folder in done:
        (out / folder.name).symlink_to(Path("..") / folder.name, target_is_directory=True)
    stamp = dt.datetime.now().replace(microsecond=0)
    (out / "INTERIM.md").write_text(
        f"# Interim report of {sweep_dir.name}\n\n{len(done)} of {len(cells)} cells done at {stamp}; the sweep "
        "writes its own report beside this folder when it ends. Cells:\n\n" +
        "".join(f"- {folder.name}\n" for folder in done))
    if done:
        write_summary(out, [f.name for f in done], reference=reference, contrast=contrast)
        mark = (f"> **Interim report**: {len(done)} of {len(cells)} cells of the sweep done at {stamp} "
                "(`scripts/sweep_status.py --report`); the sweep writes its own report when it ends.\n\n")
        for name in ("summary.md", "trends.md", "targets.md"):
            if (path := out / name).exists():
                path.write_text(mark + path.read_text())
    return out


def report_settings(path: Path) -> tuple[str | None, dict | None]:
    """The sweep's `paired_reference` and `contrast` (its report's settings), from its multirun.yaml; one that
    cannot be read makes no report (a report at other settings would look like the sweep's)."""
    try:
        config = OmegaConf.load(path)
        contrast = config.get("contrast")
        return config.get("paired_reference"), OmegaConf.to_container(contrast) if contrast else None
    except Exception as err:  # not YAML, not a mapping, or an unresolvable value
        raise SystemExit(f"{path} is unreadable ({one_line(err)}): no interim report written (it needs the "
                         "sweep's paired_reference and contrast)") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Where a sweep in flight stands, and its report so far.")
    p.add_argument("sweep_dir", type=Path, help="the sweep's folder, e.g. outputs/sweeps/peers-tiny_sd3_shapes")
    p.add_argument("--report", action="store_true", help="write the report over the done cells to <sweep>/interim/")
    args = p.parse_args(argv)
    sweep_dir = args.sweep_dir
    if not sweep_dir.is_dir():
        raise SystemExit(f"{sweep_dir}: not a folder (a sweep's output folder, outputs/sweeps/<group>-<model>, is expected)")
    cells, started, planned = status(sweep_dir)
    counts = {s: sum(c.state == s for c in cells) for s in ("done", "failed", "unfinished", "not started")}
    what = "cells planned" if planned else "cell folders (the sweeper's parameters could not be expanded)"
    print(f"{sweep_dir}: {len(cells)} {what}; started (or resumed) {started}")
    print("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    common = set.intersection(*(set(c.overrides) for c in cells)) if cells else set()
    if common:
        print("  every cell: " + " ".join(o for o in cells[0].overrides if o in common))
    shown = {id(c): " ".join(o for o in c.overrides if o not in common) for c in cells}
    width = max(map(len, shown.values()), default=0)
    for cell in cells:
        took = str(dt.timedelta(seconds=int(cell.seconds))) if cell.seconds is not None else "-"
        note = f"  ({len(cell.earlier)} earlier folder(s))" if cell.earlier else ""
        error = f"  {cell.error[:120]}" if cell.error else ""
        print(f"  {cell.state:<11} {shown[id(cell)]:<{width}}  {took:>8}{note}{error}")
    if (eta := remaining(cells)) is not None:
        print(eta)
    if args.report:
        reference, contrast = report_settings(sweep_dir / "multirun.yaml")
        out = interim_report(sweep_dir, cells, reference, contrast)
        print(f"interim report of {counts['done']} done cell(s): {out}")



if __name__ == "__main__":
    main()
