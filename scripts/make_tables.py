"""Tables from result directories: the main table (one row per run: model, data, steps, method and every
setting that varies among the rows, with the full model alongside) and, for every sweep, its table of
cells and its trends (and a comparison sweep's targets.md/csv, with its Holm-adjusted verdicts and adherence
against the full model, and its leaders.csv).

    python scripts/make_tables.py outputs --out results/tables

The main table holds single runs and the cells of the paper sweeps (`--main-sweeps`, a glob over sweep
names, default `paper_*`); ablation cells appear only in their own sweep table.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

import pandas as pd

from experiments.metrics.registry import ordered
from experiments.reports.results import SETTINGS, distinct, load_runs, varying_fields
from experiments.reports.sweeps import INTERIM
from experiments.run.latency import TRUST

QUALITY = [c for m in ordered() for c in m.columns]  # every registered metric, the full model's beside it
COST = ["transformer_macs", "transformer_macs_full", "macs_reduction", "speedup", *TRUST, "latency_s", "latency_full_s"]
KEYS = ["model", "data", "steps", "method", "knob", "knob_value"]  # then the method settings that vary
INTERVALS = [f"{m.name}_{b}" for m in ordered(per_image=True) for b in ("lo", "hi")]


def main_table(runs: pd.DataFrame, sweeps: str = "paper_*") -> pd.DataFrame:
    runs = runs[(runs.task != "macs") & (runs.status == "done")] if "task" in runs else runs
    if "sweep" in runs:
        runs = runs[runs.sweep.isna() | runs.sweep.map(lambda name: fnmatch.fnmatch(str(name), sweeps))]
    keys = KEYS + varying_fields(runs)
    runs = distinct(runs, keys, "run")  # the settings that vary, one row per run
    cols = [c for c in keys + [*SETTINGS, "run_key"] + QUALITY + INTERVALS + COST + ["num_images"] if c in runs.columns]
    table = runs[cols].sort_values([c for c in ("model", "data", "steps", "method") if c in cols])
    for col in ("transformer_macs", "transformer_macs_full"):
        if col in table:
            table[col.replace("macs", "tmacs")] = table.pop(col) / 1e12
    return table.reset_index(drop=True)


def macs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The offline MACs runs (`task=macs`): per model, steps, method and its settings that vary (e.g. the
    README's paper-comparable rows)."""
    if "task" not in runs:
        return runs.iloc[:0]
    runs = runs[(runs.task == "macs") & (runs.status == "done")]
    keys = [c for c in ["model", "steps", "method", "knob", "knob_value", *varying_fields(runs)] if c in runs.columns]
    cols = keys + [c for c in ["transformer_macs_full", "transformer_macs", "macs_reduction", "cache_bytes"]
                   if c in runs.columns]
    return runs[cols].sort_values([c for c in ("model", "steps", "method", "knob_value") if c in cols]) \
        .drop_duplicates().reset_index(drop=True)


def write(table: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(table.to_markdown(index=False, floatfmt=".4g", missingval="-") + "\n")
    (out / f"{name}.tex").write_text(table.to_latex(index=False, float_format="%.4g", na_rep="-"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="a results root (e.g. outputs) or a single sweep directory")
    p.add_argument("--out", type=Path, default=Path("results/tables"))
    p.add_argument("--main-sweeps", default="paper_*", help="glob of sweep names whose cells join the main table")
    args = p.parse_args(argv)
    runs = load_runs(args.root)
    if runs.empty:
        raise SystemExit(f"no run with a metrics.json under {args.root}")
    table = main_table(runs, args.main_sweeps)
    if len(table):
        write(table, args.out, "main")
        print(table.to_markdown(index=False, floatfmt=".4g", missingval="-"))
    macs = macs_table(runs)
    if len(macs):
        write(macs, args.out, "macs")
        print("\n" + macs.to_markdown(index=False, floatfmt=".4g", missingval="-"))
    for summary in sorted(args.root.rglob("summary.csv")):
        if summary.parent.name == INTERIM:  # a sweep in flight's interim report, not a sweep of its own
            continue
        frame = pd.read_csv(summary)
        write(frame.drop(columns=[c for c in ("cell", "error") if c in frame]), args.out, f"sweep_{summary.parent.name}")
        for extra in ("trends.md", "paired.md", "at_50.md", "targets.md", "targets.csv", "leaders.csv"):
            if (summary.parent / extra).exists():
                (args.out / f"sweep_{summary.parent.name}_{extra}").write_text((summary.parent / extra).read_text())
        print(f"\nsweep {summary.parent.name}: {len(frame)} cells -> {args.out}/sweep_{summary.parent.name}.md")


if __name__ == "__main__":
    main()
