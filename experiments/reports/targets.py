"""The comparison's report: every method and variant at every compute target, paired with the reference
method (`paired_reference`, CAT).

Reads the cells of a `sweep=peers` run (task=compare, experiments/tasks/compare.py) and writes

- `targets.csv` / `targets.md`: one row per (method, variant, target) the method reaches: the setting (one
  setting, or two mixed per prompt), the executed-MACs reduction on the evaluation prompts, each metric the
  cells measured (PSNR / SSIM / adherence: `experiments.metrics`, `comparison=True`) with 95% intervals over
  prompts, and for each the paired difference with CAT at the same target and variant (`d_cat` for the
  objective, PSNR; `<metric>_d_cat` for the others; 95% interval) and its verdict
  (experiments.compare.matched: better / worse / equivalent / undetermined);
- with another reference (`python -m experiments.reports.targets SWEEP_DIR --reference cat_budget`):
  `targets_vs_<reference>.csv/md`, the differences named `d_<reference>` (a CAT variant against every peer);
- `figures/targets_<metric>.png`: each method's tuned variant along the targets (solid, 95% band), its
  authors' setting dashed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..base.config_files import default_setting
from ..base.files import write_text
from ..compare.matched import AtTarget, Cell, at_target, compare, resamples
from ..metrics.registry import Metric, ordered
from .sweeps import Sweep, sweep_report


def _metrics(present) -> list[Metric]:
    """The per-image metrics among `present` (names), the objective first."""
    return [m for m in ordered(per_image=True) if m.name in present]


def _prefix(metric: Metric) -> str:
    """Columns of a metric's difference and verdict: bare for the objective (`d_cat`, `verdict`), named for
    the others (`ssim_d_cat`, `ssim_verdict`)."""
    return "" if metric.objective else f"{metric.name}_"


def load_cells(sweep_dir: Path, cells: list[str] | None = None) -> list[dict]:
    """The compare cells of a sweep: each {"method", "variant", "plan", "rows": {key: per-prompt values}}."""
    out = []
    for folder in sorted(Path(sweep_dir).iterdir()):
        plan_path = folder / "compare.json"
        if not plan_path.exists() or (cells is not None and folder.name not in cells):
            continue
        plan = json.loads(plan_path.read_text())
        rows = {}
        for key in plan.get("cells", []):
            path = folder / "cells" / f"{key}.json"
            if path.exists():
                rows[key] = json.loads(path.read_text())
        out.append({"method": plan["method"], "variant": plan["variant"], "plan": plan, "rows": rows,
                    "folder": folder.name})
    return out


def _cell(row: dict, label: str) -> Cell:
    values = {m.name: row[m.name] for m in _metrics(row)}
    return Cell.of(label, row["reduction"], values)


def reach(entry: dict, target: float, tol: float = 0.01) -> AtTarget | None:
    """How one (method, variant) reaches `target` on the evaluation prompts: the cells its plan chose there;
    a single cell off the target by more than `tol` on these prompts is mixed per prompt with the nearest
    evaluated cell of the same variant on the other side (None when there is none)."""
    chosen = entry["plan"]["targets"].get(f"{target:g}")
    if not chosen:
        return None
    cells = [_cell(entry["rows"][k], label) for k, label in zip(chosen["cells"], chosen["labels"]) if k in entry["rows"]]
    if len(cells) != len(chosen["cells"]):
        return None
    cells.sort(key=lambda c: c.reduction.mean())
    if len(cells) == 2 or abs(cells[0].reduction.mean() - target) <= tol:
        return AtTarget(target, tuple(cells))
    labels = {k: lab for t in entry["plan"]["targets"].values() for k, lab in zip(t["cells"], t["labels"])}
    everything = [_cell(row, labels.get(k, k)) for k, row in entry["rows"].items()]
    return at_target(everything, target, tol)


def table(entries: list[dict], targets: list[float], reference: str, tol: float = 0.01) -> pd.DataFrame:
    """One row per (method, variant, target) reached; paired with the reference method's same variant (the
    differences in `d_<reference>`, `<metric>_d_<reference>`: `d_cat` against CAT)."""
    prompts = {tuple(row["indices"]) for e in entries for row in e["rows"].values()}
    if len(prompts) > 1:
        raise ValueError("the compare cells were evaluated on different prompts; pair only cells of one sweep")
    if not prompts:
        return pd.DataFrame()
    idx = resamples(len(next(iter(prompts))))
    d = f"d_{reference}"
    by = {(e["method"], e["variant"]): e for e in entries}
    rows = []
    for (method, variant), entry in sorted(by.items()):
        ref_entry = by.get((reference, variant))
        for target in targets:
            mine = reach(entry, target, tol)
            if mine is None:
                continue
            ref = reach(ref_entry, target, tol) if ref_entry is not None and method != reference else None
            row = {"method": method, "variant": variant, "target": target, "setting": mine.setting,
                   "reduction": mine.reduction}
            for spec in _metrics(mine.cells[0].values):
                metric = spec.name
                if not all(metric in c.values for c in mine.cells):
                    continue
                has_ref = ref is not None and all(metric in c.values for c in ref.cells)
                res = compare(mine, ref if has_ref else None, metric, idx)
                prefix = _prefix(spec)
                row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = res[metric], res[f"{metric}_lo"], res[f"{metric}_hi"]
                if has_ref:
                    row[f"{prefix}{d}"], row[f"{prefix}{d}_lo"], row[f"{prefix}{d}_hi"] = res["d"], res["d_lo"], res["d_hi"]
                    row[f"{prefix}verdict"] = res["verdict"]
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, title: str, reference: str) -> str:
    """targets.md: per target, a table of methods and variants with each metric's mean and interval, its paired
    difference with the reference method (`d_<reference>`) and the verdict."""
    d, who = f"d_{reference}", reference
    metrics = _metrics(frame.columns)
    margins = ", ".join(f"{m.short} {m.margin:g}" + (f" {m.unit}" if m.unit else "") for m in metrics)
    lines = [f"# {title}", "",
             f"Every method at matched executed-MACs reductions (counted on the evaluated batches), paired with {who} "
             f"at the same target and variant over the same prompts and seeds. `{d}` = method - {who} with its "
             "95% bootstrap interval; verdict: better / worse when that interval excludes 0, equivalent when the "
             f"90% interval lies within the margin ({margins}), else undetermined. "
             "A setting `a (x%) + b (y%)` is a per-prompt mixture of two real settings that spends the target's "
             "MACs; it is never a setting of its own.", ""]
    fmt = lambda v, lo, hi, nd: "" if pd.isna(v) else f"{v:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"  # noqa: E731
    header = ["method", "variant", "setting", "reduction"]
    for m in metrics:
        header += [m.short + (f" ({m.unit})" if m.unit else ""), f"{d} {m.short}", "verdict"]
    first = metrics[0] if metrics else None
    for target, part in frame.groupby("target"):
        lines += [f"## {100 * target:.0f}% fewer executed MACs", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows = part.sort_values(["variant", first.name], ascending=[True, first.lower_is_better]) if first else part
        for _, r in rows.iterrows():
            get = lambda k: r.get(k, np.nan)  # noqa: E731
            cells = [str(r.method), r.variant, str(r.setting).replace("|", "/"), f"{100 * r.reduction:.1f}%"]
            for m in metrics:
                diff, verdict = f"{_prefix(m)}{d}", get(f"{_prefix(m)}verdict")
                cells += [fmt(get(m.name), get(f"{m.name}_lo"), get(f"{m.name}_hi"), m.digits),
                          fmt(get(diff), get(f"{diff}_lo"), get(f"{diff}_hi"), m.digits),
                          "" if pd.isna(verdict) else str(verdict)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(frame: pd.DataFrame, metric: str, path: Path, title: str) -> Path | None:
    """Each method's tuned variant along the targets (solid line, 95% band), its authors' setting dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty or metric not in frame:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    methods = sorted(frame.method.unique())
    palette = plt.get_cmap("tab20")  # the ten strong hues first, then their light shades: no colour is reused
    colors = {m: palette((2 * i) % 20 + (2 * i) // 20 % 2) for i, m in enumerate(methods)}
    for method, part in frame.groupby("method"):
        for variant, style in (("tuned", "-"), ("authors", "--")):
            rows = part[part.variant == variant].sort_values("reduction")
            if rows.empty or rows[metric].isna().all():
                continue
            x = 100 * rows.reduction.to_numpy()
            ax.plot(x, rows[metric], style, marker="o", ms=3, color=colors[method], label=f"{method} ({variant})")
            if variant == "tuned":
                ax.fill_between(x, rows[f"{metric}_lo"], rows[f"{metric}_hi"], color=colors[method], alpha=0.12)
    ax.set_xlabel("executed-MACs reduction (%)")
    ax.set_ylabel(next((m.axis_label for m in ordered() if m.name == metric), metric))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, not over it
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_report(sweep_dir: Path, cells: list[str] | None = None, reference: str | None = None) -> pd.DataFrame:
    """targets.csv, targets.md and figures/targets_*.png of a comparison sweep (empty frame: not one), every
    method paired with `reference` (default: conf/config.yaml's `paired_reference`); with another reference,
    targets_vs_<reference>.csv/md and no figures (they do not depend on the reference)."""
    default = str(default_setting("paired_reference"))
    reference = reference or default
    entries = load_cells(sweep_dir, cells)
    if not entries:
        return pd.DataFrame()
    targets = sorted({float(t) for e in entries for t in e["plan"]["targets"]})
    frame = table(entries, targets, reference)
    if frame.empty:
        return frame
    n = len(next(iter(next(e for e in entries if e["rows"])["rows"].values()))["indices"])
    title = f"{sweep_title(sweep_dir, entries)}: {n} evaluation prompts, paired with {reference}"
    stem = "targets" if reference == default else f"targets_vs_{reference}"
    write_text(Path(sweep_dir) / f"{stem}.csv", frame.to_csv(index=False))
    write_text(Path(sweep_dir) / f"{stem}.md", markdown(frame, title, reference) + "\n")
    if reference != default:
        return frame
    for metric in _metrics(frame.columns):
        figure(frame, metric.name, Path(sweep_dir) / "figures" / f"targets_{metric.name}.png", title)
    return frame


@sweep_report
def write_targets(sweep: Sweep) -> list[Path]:
    """The report of a comparison sweep (its cells hold compare.json), paired with `paired_reference` when that
    is a method; none for another sweep."""
    frame = write_report(sweep.folder, sweep.cells, sweep.reference if "=" not in sweep.reference else None)
    if frame.empty:
        return []
    return [sweep.folder / "targets.csv", sweep.folder / "targets.md",
            *sorted((sweep.folder / "figures").glob("targets_*.png"))]


def sweep_title(sweep_dir: Path, entries: list[dict]) -> str:
    import yaml

    cfg = yaml.safe_load((Path(sweep_dir) / entries[0]["folder"] / "config.yaml").read_text()) or {}
    model = cfg.get("model", {})
    shift = (model.get("scheduler") or {}).get("shift")
    return f"{model.get('name', '?')} ({model.get('steps', '?')} steps{f', shift {shift}' if shift else ''})"


def main(argv=None) -> None:
    """`python -m experiments.reports.targets SWEEP_DIR [--reference METHOD]`: the report of a finished (or
    partly finished) comparison sweep, against CAT or another method of the sweep."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--reference", default=None, help="a method of the sweep (default: paired_reference, cat)")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"{args.sweep_dir}: not a folder (a sweep=peers output folder is expected)")
    entries = load_cells(args.sweep_dir)
    methods = sorted({e["method"] for e in entries})
    if not entries:
        raise SystemExit(f"{args.sweep_dir}: no compare cells (compare.json) in it")
    if args.reference is not None and args.reference not in methods:
        raise SystemExit(f"--reference {args.reference}: not a method of this sweep; its methods: {', '.join(methods)}")
    frame = write_report(args.sweep_dir, reference=args.reference)
    print(f"{len(frame)} rows written to {args.sweep_dir}")


if __name__ == "__main__":
    main()
