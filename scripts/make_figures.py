"""Figures from result directories: quality versus MACs per method, image grids of each method against the
full model, and the selection-map figure (relative noise, clusters, recomputed tokens, staleness over steps)
of the methods that record selections.

    python scripts/make_figures.py outputs --out results/figures [--quality adherence]
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import pandas as pd
import yaml

from experiments.base.files import read_json
from experiments.base.methods import knob_of
from experiments.metrics.images import load_prompts
from experiments.metrics.registry import ordered, spec
from experiments.reports.figures import image_grid, plt, save, selection_figure
from experiments.reports.results import CONFIG, SETTINGS, find_runs, load_run


def _label(run: Path, method: str) -> str:
    """A grid row label that states the method's settings (its knob, steps)."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    knob, value = knob_of(cfg.get("method"))
    steps = (cfg.get("model") or {}).get("steps")
    return f"{method}" + (f" {knob}={value}" if value is not None else "") + (f", {steps} steps" if steps else "")


# The axes that must be equal within one line (a line runs along the method's knob): these, the run
# settings, and every field of the method's config but the knob.
LINE_KEYS = ["model", "data", "method", "steps", *SETTINGS]


def _line_keys(data):
    """`data` with its knob's config column blanked in each row, and the columns that tell lines apart."""
    config = [c for c in data.columns if c.startswith(CONFIG)]
    data = data.copy()
    for i, knob in data["knob"].items() if "knob" in data else ():
        if isinstance(knob, str) and CONFIG + knob in data:
            data.at[i, CONFIG + knob] = None
    data[config] = data[config].astype(object).where(data[config].notna(), "")
    return data, [k for k in LINE_KEYS if k in data] + config


def quality_vs_macs(runs, quality: str, out: Path) -> Path | None:
    """Quality against executed MACs: one line per configuration that differs only in its method's knob, so
    cells that differ on any other axis are never joined."""
    runs = runs[(runs.get("status") == "done")] if "status" in runs else runs
    needed = [quality, "transformer_macs", "transformer_macs_full"]
    if any(c not in runs for c in needed) or runs.dropna(subset=needed).empty:  # no point: no figure, not a blank one
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    data, keys = _line_keys(runs.dropna(subset=needed))
    varying = [k for k in keys if data[k].astype(str).nunique() > 1]
    for values, group in data.groupby(keys, dropna=False):
        group = group.sort_values("transformer_macs")
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values if isinstance(values, tuple) else (values,))
                          if k in varying or k == "method")
        x = 100 * group.transformer_macs / group.transformer_macs_full
        line, = ax.plot(x, group[quality], marker="o", ms=3, lw=1.2, label=label)
        if f"{quality}_lo" in group and group[f"{quality}_lo"].notna().all():
            ax.fill_between(x, group[f"{quality}_lo"], group[f"{quality}_hi"], color=line.get_color(), alpha=0.15, lw=0)
    if quality + "_full" in data and data[quality + "_full"].notna().any():
        ax.scatter([100], [data[quality + "_full"].mean()], marker="*", s=120, color="k", label="full model", zorder=3)
    else:
        ax.axvline(100, color="k", ls="--", lw=1, label="full model (reference)")
    ax.set_xlabel("executed transformer MACs (% of full model)")
    ax.set_ylabel(spec(quality).axis_label if spec(quality) else quality)
    ax.legend(fontsize=5)
    ax.grid(alpha=0.3)
    return save(fig, out / f"quality_vs_macs_{quality}.png", pdf=True)


READ_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile)  # a truncated image, records file or npz


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
        raise SystemExit(f"{root}: not a folder; give a results root (e.g. outputs) or a run or sweep folder")
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


def grid(run: Path, tag: str, count: int, out: Path) -> Path | None:
    """The run's grid of its first `count` prompts, the full model against its method (None: it has no images);
    only the prompts both have images of."""
    method_dirs = sorted(d for d in (run / "images").glob("*") if d.is_dir() and d.name != "full")
    if not method_dirs:
        return None
    files = [f for f in sorted((run / "images" / "full").glob("*.png")) if (method_dirs[0] / f.name).exists()]
    if not files:
        raise ValueError(f"no image of both the full model and {method_dirs[0].name} in {run / 'images'}")
    files = files[:count]
    prompts = load_prompts(run / "records.jsonl", [int(f.stem) for f in files]) \
        if (run / "records.jsonl").exists() else None
    rows = {"full model": files, _label(run, method_dirs[0].name): [method_dirs[0] / f.name for f in files]}
    return image_grid(rows, prompts, out / f"grid_{tag}.png", pdf=True)


def selection_map(run: Path, tag: str, out: Path) -> Path | None:
    """The run's selection-map figure (None: it recorded no selections)."""
    npz = run / "selection.npz"
    return selection_figure(npz, out / f"selection_{tag}.png", pdf=True) if npz.exists() else None


def check_out(out: Path) -> None:
    """`--out` is a folder, or can be made one (nothing above it is a file)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        what = "a file" if existing == out else f"cannot be made: {existing} is a file"
        raise SystemExit(f"--out {out}: {what}; "
                         "give a folder for the figures")


def main(argv=None) -> None:
    names = [m.name for m in ordered()]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, default=Path("results/figures"))
    p.add_argument("--quality", default=None, help=f"one of {', '.join(names)} (default: every one the runs measured)")
    p.add_argument("--grid-prompts", type=int, default=8)
    p.add_argument("--sweep-cells", action="store_true", help="also draw grids and selection maps of every sweep cell")
    args = p.parse_args(argv)
    check_out(args.out)
    if args.quality is not None and args.quality not in names:
        raise SystemExit(f"--quality {args.quality!r} is unknown; allowed: {', '.join(names)}")
    if args.grid_prompts < 1:
        raise SystemExit(f"--grid-prompts {args.grid_prompts} is invalid; allowed: an integer >= 1")
    runs, failed = read_runs(args.root)
    made = [quality_vs_macs(runs, quality, args.out) for quality in ([args.quality] if args.quality else names)]
    if args.quality and made[0] is None:
        print(f"warning: no quality figure of {args.quality}: no done run has both it and its transformer MACs",
              file=sys.stderr)
    skipped = 0
    for run in runs.run:
        run = Path(run)
        relative = run.relative_to(args.root)
        if "sweeps" in relative.parts and not args.sweep_cells:
            skipped += 1
            continue
        tag = (relative if relative.parts else Path(run.resolve().name)).as_posix()
        tag = tag.replace("/", "_").replace("=", "-").replace(",", "_")
        for what, draw in (("grid", lambda: grid(run, tag, args.grid_prompts, args.out)),
                           ("selection map", lambda: selection_map(run, tag, args.out))):
            try:
                made.append(draw())
            except READ_ERRORS as err:
                print(f"warning: {run}: its {what} is left out ({type(err).__name__}: {err})", file=sys.stderr)
                failed += 1
    made = list(filter(None, made))
    for path in made:
        print(path)
    if not made:
        raise SystemExit(f"{args.root}: no figure made: no done run with a quality and its transformer MACs, nor "
                         "a run with images or a selection.npz" + (f" ({skipped} sweep cell(s) not drawn: "
                                                                   "--sweep-cells draws them)" if skipped else ""))
    if failed:
        raise SystemExit(f"error: {failed} run(s) or figure(s) left out (named above)")


if __name__ == "__main__":
    main()
