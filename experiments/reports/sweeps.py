"""A sweep's tables: `summary.csv/md` (one row per cell), `trends.md`, and the registered sweep reports.

Every cell's run directory holds status.json (done / failed + error), metrics.json, config.yaml,
run_key.json and .hydra/overrides.yaml; the summary has one row per cell: its overrides, the settings that
vary among the cells (results.SETTINGS), its metrics and its status.

A sweep report is a function `(Sweep) -> list of the files it wrote` registered with `@sweep_report` in a
module of this package (every module of `experiments/reports/` is imported with the package): it reads what
it needs from the sweep and writes nothing when its inputs are not there (the comparison's targets report,
the paired differences and the contrast, the level sweep's Pareto report). Adding one is adding its file
(docs/architecture.md, "Adding a sweep report").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from ..base.config_files import default_setting
from ..base.files import read_json, write_text
from ..base.secrets import scrub_override
from ..metrics.registry import ordered
from .results import CONFIG, distinct, run_settings


MANIFEST = ".cells"  # the cells of the sweep's latest multirun, one directory name per line
INTERIM = "interim"  # a report over the done cells of a sweep in flight (scripts/sweep_status.py --report)


def collect(sweep_dir: Path, cells: list[str] | None = None) -> pd.DataFrame:
    """One row per cell of the sweep directory (only `cells` when given: a directory keeps the cells of
    earlier runs with other configurations, which must not mix into this run's table). Each of
    results.SETTINGS is a column where it varies among the cells, or where it is also an override."""
    rows, swept = [], []
    for status_file in sorted(sweep_dir.glob("*/status.json")):
        cell = status_file.parent
        if cells is not None and cell.name not in cells:
            continue
        row = {"cell": cell.name}
        overrides = cell / ".hydra" / "overrides.yaml"
        if overrides.exists():
            for item in yaml.safe_load(overrides.read_text()) or []:
                key, _, value = scrub_override(item).partition("=")
                key = key.lstrip("+~")
                if key not in ("sweep", "group", "output_root", "logger", "debug"):
                    row[key] = value
                    swept.append(key)
        for key, value in run_settings(cell).items():  # what the run recorded, over what was asked
            if value is not None or key not in row:
                # as text, like the overrides: a setting reads the same whether swept or configured, and a
                # varying one is an axis of the sweep (trends, pairing); stale_code stays a flag
                row[key] = value if value is None or key == "stale_code" else str(value)
        status = read_json(status_file) or {"status": "failed", "error": "status.json is corrupt"}
        row["status"] = status.get("status")
        row["error"] = " ".join((status.get("error") or "").split())[:300]
        metrics = read_json(cell / "metrics.json") if row["status"] == "done" else None
        if row["status"] == "done" and not isinstance(metrics, dict):
            row["status"], row["error"] = "failed", "metrics.json is missing or corrupt"
        row.update(metrics or {})
        rows.append(row)
    return distinct(pd.DataFrame(rows), list(dict.fromkeys(swept)), "cell")


COST = ("macs_reduction", "speedup")  # what a cell saves: measured by the run, not image metrics


def trends(frame: pd.DataFrame) -> str:
    """The sweep's trends as Markdown: the mean of each metric over the finished cells for every value of
    every swept axis (the other axes averaged out), then quality by method and each swept setting of the
    methods' configs together."""
    if "status" not in frame:
        return ""
    done = frame[frame.status == "done"]
    quality = [m.name for m in ordered()]
    metrics = [c for c in (*quality, *COST) if c in done and done[c].notna().any()]
    axes = []
    for c in frame.columns:  # run_key names runs that tie on every setting: no axis
        if c in metrics or c in ("cell", "error", "status", "run_key") or pd.api.types.is_numeric_dtype(frame[c]) \
                or frame[c].nunique() <= 1:
            continue
        # an axis that only renames an earlier one (the prompt set of a swept data.path, the guidance of a
        # swept model.guidance_scale) would repeat its table
        if not any(_same_groups(done[c], done[a]) for a in axes):
            axes.append(c)
    if done.empty or not metrics or not axes:
        return ""
    parts = [f"Means over the {len(done)} finished cells (of {len(frame)}).\n"]
    for axis in axes:
        table = done.groupby(axis)[metrics].mean()
        table.insert(0, "cells", done.groupby(axis).size())
        parts.append(f"### by {axis}\n\n" + table.to_markdown(floatfmt=".4g") + "\n")
    for setting in [a for a in axes if a.startswith(CONFIG)] if "method" in axes else []:
        for metric in [m.name for m in ordered(per_image=True) if m.name in metrics]:
            table = done.pivot_table(index="method", columns=setting, values=metric, aggfunc="mean")
            parts.append(f"### {metric} by method and {setting}\n\n" + table.to_markdown(floatfmt=".4g") + "\n")
    return "\n".join(parts)


def _same_groups(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns split the rows into the same groups (each value of one stands for one of the other)."""
    pairs = pd.DataFrame({"a": a.astype(str), "b": b.astype(str)}).drop_duplicates()
    return pairs.a.is_unique and pairs.b.is_unique


def current_cells(sweep_dir: Path) -> list[str] | None:
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        return None
    return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})


@dataclass(frozen=True)
class Sweep:
    """What a sweep report reads: the sweep's folder and summary, and what the sweep file declared."""

    folder: Path
    frame: pd.DataFrame  # summary.csv: one row per cell (column `cell`: its folder's name)
    cells: list[str] | None  # the cells of this multirun (None: every cell in the folder)
    reference: str  # paired_reference: a method name, or "column=value"
    contrast: dict | None  # the sweep file's `contrast:` report, if it declares one


SWEEP_REPORTS: list[Callable[[Sweep], list[Path]]] = []


def sweep_report(write: Callable[[Sweep], list[Path]]) -> Callable[[Sweep], list[Path]]:
    """Registers a sweep report: `write(sweep)` writes its files into `sweep.folder` and returns them (none
    when the sweep lacks what it reads)."""
    SWEEP_REPORTS.append(write)
    return write


def write_summary(sweep_dir: Path, cells: list[str] | None = None, reference: str | None = None,
                  contrast: dict | None = None) -> pd.DataFrame:
    """summary.csv/md and trends.md of the sweep's cells, then every registered sweep report (a cell is paired
    against `reference`: a method name or "column=value"; default: conf/config.yaml's `paired_reference`;
    `contrast`: the contrast report the sweep file declares)."""
    cells = cells if cells is not None else current_cells(sweep_dir)
    frame = collect(sweep_dir, cells)
    if frame.empty:
        return frame
    write_text(sweep_dir / "summary.csv", frame.to_csv(index=False))
    write_text(sweep_dir / "summary.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    text = trends(frame)
    if text:
        write_text(sweep_dir / "trends.md", text)
    sweep = Sweep(Path(sweep_dir), frame, cells, reference or str(default_setting("paired_reference")), contrast)
    for report in SWEEP_REPORTS:
        report(sweep)
    return frame
