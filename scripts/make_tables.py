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
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from experiments.base.files import read_json
from experiments.metrics.registry import ordered
from experiments.reports.results import SETTINGS, distinct, find_runs, load_run, varying_fields
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


def unreadable(run: Path) -> str | None:
    """Why a run's records cannot be read (None: they can): its metrics.json or config.yaml truncated or not a
    mapping (a row without its metrics would look like a run that measured nothing)."""
    if not isinstance(read_json(run / "metrics.json"), dict):
        return "metrics.json is truncated or not JSON"
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    except (OSError, yaml.YAMLError) as err:
        return f"config.yaml is unreadable ({type(err).__name__})"
    return None if isinstance(cfg or {}, dict) else "config.yaml is not a mapping"


def read_runs(root: Path) -> tuple[pd.DataFrame, int]:
    """The runs under `root` whose records read, and how many do not (each named and left out)."""
    if not root.is_dir():
        raise SystemExit(f"{root}: not a folder; give a results root (e.g. outputs) or a sweep folder")
    found = find_runs(root)
    if not found:
        raise SystemExit(f"no run with a metrics.json under {root}")
    why = {run: unreadable(run) for run in found}
    for run, what in why.items():
        if what:
            print(f"warning: {run}: {what}; the run is left out", file=sys.stderr)
    good = [run for run in found if why[run] is None]
    if not good:
        raise SystemExit(f"{root}: none of its {len(found)} run(s) can be read (named above)")
    return pd.DataFrame([load_run(run) for run in good]), len(found) - len(good)


def not_done(runs: pd.DataFrame) -> str | None:
    """A line on the runs the tables leave out because they did not finish (None: every run is done)."""
    states = runs.status.fillna("no readable status.json")
    counts = states[states != "done"].value_counts()
    if counts.empty:
        return None
    return (f"note: {counts.sum()} of {len(runs)} run(s) left out, not done ("
            + ", ".join(f"{state}: {n}" for state, n in counts.items()) + ")")


def read_summary(path: Path) -> pd.DataFrame | None:
    """A sweep's summary.csv, or None when it is unreadable or holds no cell (a table of no cells would look
    like a real one)."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        print(f"warning: {path} is unreadable ({type(err).__name__}: {err}); its sweep table is left out",
              file=sys.stderr)
        return None
    if frame.empty:
        print(f"warning: {path} holds no cell; its sweep table is left out", file=sys.stderr)
        return None
    return frame


def sweep_names(summaries: list[Path], root: Path) -> dict[Path, str]:
    """Each sweep's table name: its folder's name, or its path under `root` where sweeps share a folder name
    (results/<group>/<model>/: one table would replace the other, and their extra reports would mix)."""
    counts = Counter(s.parent.name for s in summaries)
    return {s: s.parent.name if counts[s.parent.name] == 1
            else (s.parent.relative_to(root).as_posix() if s.parent != root else root.resolve().name).replace("/", "_")
            for s in summaries}


def check_out(out: Path) -> None:
    """`--out` is a folder, or can be made one (nothing above it is a file)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        what = "a file" if existing == out else f"cannot be made: {existing} is a file"
        raise SystemExit(f"--out {out}: {what}; "
                         "give a folder for the tables")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="a results root (e.g. outputs) or a single sweep directory")
    p.add_argument("--out", type=Path, default=Path("results/tables"))
    p.add_argument("--main-sweeps", default="paper_*", help="glob of sweep names whose cells join the main table")
    args = p.parse_args(argv)
    check_out(args.out)
    runs, left_out = read_runs(args.root)
    if (note := not_done(runs)) is not None:
        print(note, file=sys.stderr)
    written = 0
    table = main_table(runs, args.main_sweeps)
    if len(table):
        write(table, args.out, "main")
        print(table.to_markdown(index=False, floatfmt=".4g", missingval="-"))
        written += 1
    macs = macs_table(runs)
    if len(macs):
        write(macs, args.out, "macs")
        print("\n" + macs.to_markdown(index=False, floatfmt=".4g", missingval="-"))
        written += 1
    # a sweep in flight's interim report is not a sweep of its own
    summaries = [s for s in sorted(args.root.rglob("summary.csv")) if s.parent.name != INTERIM]
    for summary, name in sweep_names(summaries, args.root).items():
        frame = read_summary(summary)
        if frame is None:
            left_out += 1
            continue
        write(frame.drop(columns=[c for c in ("cell", "error") if c in frame]), args.out, f"sweep_{name}")
        for extra in ("trends.md", "paired.md", "at_50.md", "targets.md", "targets.csv", "leaders.csv"):
            if (summary.parent / extra).exists():
                (args.out / f"sweep_{name}_{extra}").write_text((summary.parent / extra).read_text())
        print(f"\nsweep {summary.parent}: {len(frame)} cells -> {args.out}/sweep_{name}.md")
        written += 1
    if not written:
        raise SystemExit(f"{args.root}: no table written: no done run outside sweeps or in a sweep matching "
                         f"--main-sweeps {args.main_sweeps!r} ('*' takes every sweep's cells), and no sweep with a "
                         "readable summary.csv (a sweep writes it when it ends)")
    if left_out:
        raise SystemExit(f"error: {left_out} run(s) or sweep(s) unreadable or empty, left out of the tables (named "
                         "above)")

if __name__ == "__main__":
    main()
