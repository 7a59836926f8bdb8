"""Figures from result directories: quality versus MACs per method, image grids of each method against the
full model, and the selection-map figure (relative noise, clusters, recomputed tokens, staleness over steps)
of the methods that record selections.

    python scripts/make_figures.py outputs --out results/figures [--quality adherence]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.base.methods import knob_of
from experiments.metrics.images import load_prompts
from experiments.metrics.registry import ordered, spec
from experiments.reports.figures import image_grid, plt, save, selection_figure
from experiments.reports.results import CONFIG, SETTINGS, load_runs


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
    if quality not in runs or "transformer_macs" not in runs or runs[quality].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    data, keys = _line_keys(runs.dropna(subset=[quality, "transformer_macs"]))
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, default=Path("results/figures"))
    p.add_argument("--quality", default=None, help=f"one of {', '.join(m.name for m in ordered())} (default: every "
                   "one the runs measured)")
    p.add_argument("--grid-prompts", type=int, default=8)
    p.add_argument("--sweep-cells", action="store_true", help="also draw grids and selection maps of every sweep cell")
    args = p.parse_args(argv)
    runs = load_runs(args.root)
    if runs.empty:
        raise SystemExit(f"no run with a metrics.json under {args.root}")
    made = []
    for quality in [args.quality] if args.quality else [m.name for m in ordered()]:
        made.append(quality_vs_macs(runs, quality, args.out))
    for run in runs.run:
        run = Path(run)
        if "sweeps" in run.relative_to(args.root).parts and not args.sweep_cells:
            continue
        method_dirs = [d for d in (run / "images").glob("*") if d.name != "full"] if (run / "images").exists() else []
        tag = run.relative_to(args.root).as_posix().replace("/", "_").replace("=", "-").replace(",", "_")
        if method_dirs:
            files = sorted((run / "images" / "full").glob("*.png"))[: args.grid_prompts]
            prompts = load_prompts(run / "records.jsonl", [int(f.stem) for f in files]) \
                if (run / "records.jsonl").exists() else None
            rows = {"full model": files, _label(run, method_dirs[0].name): [method_dirs[0] / f.name for f in files]}
            made.append(image_grid(rows, prompts, args.out / f"grid_{tag}.png", pdf=True))
        if (run / "selection.npz").exists():
            made.append(selection_figure(run / "selection.npz", args.out / f"selection_{tag}.png", pdf=True))
    for path in filter(None, made):
        print(path)


if __name__ == "__main__":
    main()
