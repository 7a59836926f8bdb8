"""A level sweep's report (methods x their knob levels, task=generate: `method=a,b,... level=0,1,2,3`):
quality against compute, one line per method along its own knob.

- `pareto_<metric>.png`: quality (mean over prompts, 95% bootstrap band) against % of the full
  model's executed MACs and against the measured speedup, the full model marked.
- `at_50.md` / `at_50.csv`: every method interpolated to 50% MACs reduction (linearly between the
  two cells that bracket it, the interval bounds likewise), the best marked only where its interval
  separates from every other method's.

A worked example of a sweep report (docs/architecture.md): one function registered with `@sweep_report`
that writes nothing unless the sweep is one it reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..base.files import write_text
from ..base.methods import knob_of
from ..metrics.registry import ordered, spec
from .sweeps import Sweep, sweep_report


def _label(metric: str) -> str:
    registered = spec(metric)
    return registered.axis_label if registered else metric


def _per_image() -> tuple[str, ...]:
    return tuple(m.name for m in ordered(per_image=True))


def add_knobs(frame: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """Adds `knob` (the field the method's sweep varies) and `knob_value` from each cell's config."""
    knobs = []
    for cell in frame["cell"]:
        path = Path(sweep_dir) / cell / "config.yaml"
        cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
        knobs.append(knob_of(cfg.get("method")))
    frame = frame.copy()
    frame["knob"], frame["knob_value"] = [k for k, _ in knobs], [v for _, v in knobs]
    return frame


def is_level_sweep(frame: pd.DataFrame) -> bool:
    """A sweep over methods and their knob levels only (other axes would be joined by the lines)."""
    if "method" not in frame or "macs_reduction" not in frame:
        return False
    axes = [c for c in frame.columns if c not in ("cell", "error", "status") and not pd.api.types.is_numeric_dtype(frame[c])
            and frame[c].nunique() > 1 and c not in ("knob", "knob_value")]
    return frame["method"].nunique() > 1 and set(axes) <= {"method", "level"}


def _lines(done: pd.DataFrame, x: str = "macs_reduction"):
    """Each method's cells in knob order (by MACs), so a line follows the knob also where the measured
    speedup is noisy and not monotonic."""
    for method, cells in done.groupby("method"):
        yield method, cells.sort_values("macs_reduction")


def pareto_figure(frame: pd.DataFrame, metric: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[(frame.status == "done") & frame[metric].notna()] if metric in frame else frame.iloc[:0]
    if done.empty:
        return None
    done = done.assign(pct_macs=100.0 * (1.0 - done["macs_reduction"]))
    axes_x = [("pct_macs", "executed transformer MACs (% of full model)")]
    if "speedup" in done and done["speedup"].notna().any():
        axes_x.append(("speedup", "measured speedup over the full model (x)"))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(6.2 * len(axes_x), 4.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (x, xlabel) in zip(axes[0], axes_x):
        for i, (method, cells) in enumerate(_lines(done, x)):
            c = colors(i % 10)
            ax.plot(cells[x], cells[metric], "o-", color=c, label=method, lw=1.6, ms=4)
            if f"{metric}_lo" in cells:
                ax.fill_between(cells[x], cells[f"{metric}_lo"], cells[f"{metric}_hi"], color=c, alpha=0.15, lw=0)
        full_x = 100.0 if x == "pct_macs" else 1.0
        if f"{metric}_full" in done and done[f"{metric}_full"].notna().any():
            ax.axhline(done[f"{metric}_full"].mean(), color="k", ls="--", lw=1)
            ax.plot([full_x], [done[f"{metric}_full"].mean()], "k*", ms=12, label="full model")
        else:  # fidelity metrics: the full model is the reference itself
            ax.axvline(full_x, color="k", ls="--", lw=1, label="full model (reference)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_label(metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{_label(metric)} against compute; bands: 95% bootstrap intervals over prompts",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def interpolate_at(frame: pd.DataFrame, target: float = 0.5, metrics=None) -> pd.DataFrame:
    """Each method's metrics (and intervals, knob, speedup) linearly interpolated to `macs_reduction = target`
    (`metrics`: their names; default every registered per-image metric)."""
    metrics = _per_image() if metrics is None else metrics
    done = frame[frame.status == "done"]
    rows = []
    for method, cells in _lines(done, "macs_reduction"):
        xs = cells["macs_reduction"].to_numpy(float)
        row = {"method": method, "macs_reduction": target}
        inside = xs.min() <= target <= xs.max()
        row["in_range"] = bool(inside)
        cols = [c for m in metrics for c in (m, f"{m}_lo", f"{m}_hi") if c in cells]
        cols += [c for c in ("speedup", "knob_value") if c in cells]
        for c in cols:
            # between the two cells that bracket the target, among those where the value is finite
            # (a cell identical to the full model has an infinite PSNR and no interval)
            ys = pd.to_numeric(cells[c], errors="coerce").to_numpy(float)
            ok = np.isfinite(ys)
            below, above = ok & (xs <= target), ok & (xs >= target)
            row[c] = (float(np.interp(target, xs[ok], ys[ok])) if inside and below.any() and above.any()
                      else float("nan"))
        row["knob"] = cells["knob"].iloc[0] if "knob" in cells else None
        rows.append(row)
    return pd.DataFrame(rows)


def best_marks(table: pd.DataFrame, metric: str) -> dict[str, str]:
    """'best' for the method whose interval separates from every other method's, else nothing."""
    if metric not in table or table[metric].isna().all():
        return {}
    valid = table[table[metric].notna()]
    lower = bool(spec(metric) and spec(metric).lower_is_better)
    best = valid.loc[valid[metric].idxmin() if lower else valid[metric].idxmax()]
    others = valid[valid.method != best.method]
    if others.empty:
        return {}
    if lower:
        separated = (best[f"{metric}_hi"] < others[f"{metric}_lo"]).all()
    else:
        separated = (best[f"{metric}_lo"] > others[f"{metric}_hi"]).all()
    return {best.method: "best"} if separated else {}


def table_markdown(table: pd.DataFrame, metrics=None) -> str:
    metrics = [m for m in (_per_image() if metrics is None else metrics) if m in table and table[m].notna().any()]
    marks = {m: best_marks(table, m) for m in metrics}
    header = ["method", "knob at 50%"] + [_label(m) for m in metrics] + ["speedup"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        knob = f"{r.get('knob')}={r.get('knob_value'):.3g}" if r.get("in_range") and pd.notna(r.get("knob_value")) \
            else "outside its range"
        cells = [str(r.method), knob]
        for m in metrics:
            if pd.isna(r[m]):
                cells.append("n/a")
                continue
            text = f"{r[m]:.3f} [{r[f'{m}_lo']:.3f}, {r[f'{m}_hi']:.3f}]"
            cells.append(f"**{text}** (best)" if marks[m].get(r.method) else text)
        cells.append(f"{r['speedup']:.2f}x" if "speedup" in r and pd.notna(r["speedup"]) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nEach method interpolated linearly to 50% executed-MACs reduction between its two bracketing "
            "cells (interval bounds likewise). **best** only where that method's 95% interval separates "
            "from every other method's; otherwise the differences are within the noise.\n")
    return "\n".join(lines) + "\n" + note


@sweep_report
def write_report(sweep: Sweep) -> list[Path]:
    """Pareto figures and the 50% table of a level sweep; returns the files written (none for another sweep)."""
    if not is_level_sweep(sweep.frame):
        return []
    frame = add_knobs(sweep.frame, sweep.folder)
    written = []
    for metric in _per_image():
        path = pareto_figure(frame, metric, sweep.folder / "figures" / f"pareto_{metric}.png")
        if path:
            written.append(path)
    table = interpolate_at(frame, 0.5)
    write_text(sweep.folder / "at_50.csv", table.to_csv(index=False))
    write_text(sweep.folder / "at_50.md", table_markdown(table))
    return written + [sweep.folder / "at_50.csv", sweep.folder / "at_50.md"]
