"""Figures from result directories: quality versus MACs per method, image grids of CAT against the full
model, and the selection-map figure (relative noise, clusters, recomputed tokens, staleness over steps).

    python scripts/make_figures.py outputs --out results/figures [--quality adherence]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.figures import image_grid, plt, save, selection_figure  # noqa: E402
from experiments.results import load_runs  # noqa: E402


def quality_vs_macs(runs, quality: str, out: Path) -> Path | None:
    runs = runs[(runs.get("status") == "done")] if "status" in runs else runs
    if quality not in runs or "transformer_macs" not in runs or runs[quality].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for (method, steps), group in runs.dropna(subset=[quality]).groupby(["method", "steps"]):
        group = group.sort_values("transformer_macs")
        ax.plot(group.transformer_macs / 1e12, group[quality], marker="o", label=f"{method} ({steps} steps)")
    full = runs.dropna(subset=[quality + "_full"]) if quality + "_full" in runs else None
    if full is not None and not full.empty:
        for steps, group in full.groupby("steps"):
            ax.scatter(group.transformer_macs_full.iloc[0] / 1e12, group[quality + "_full"].mean(), marker="*", s=120,
                       label=f"full model ({steps} steps)")
    ax.set_xlabel("transformer TMACs per image")
    ax.set_ylabel(quality)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return save(fig, out / f"quality_vs_macs_{quality}.png", pdf=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, default=Path("results/figures"))
    p.add_argument("--quality", default=None, help="clip_score, fid, psnr, adherence (default: all present)")
    p.add_argument("--grid-prompts", type=int, default=8)
    p.add_argument("--sweep-cells", action="store_true", help="also draw grids and selection maps of every sweep cell")
    args = p.parse_args(argv)
    runs = load_runs(args.root)
    if runs.empty:
        raise SystemExit(f"no run with a metrics.json under {args.root}")
    made = []
    for quality in [args.quality] if args.quality else ["adherence", "psnr", "ssim", "clip_score", "fid"]:
        made.append(quality_vs_macs(runs, quality, args.out))
    for run in runs.run:
        run = Path(run)
        if "sweeps" in run.relative_to(args.root).parts and not args.sweep_cells:
            continue
        method_dirs = [d for d in (run / "images").glob("*") if d.name != "full"] if (run / "images").exists() else []
        tag = run.relative_to(args.root).as_posix().replace("/", "_").replace("=", "-").replace(",", "_")
        if method_dirs:
            files = sorted((run / "images" / "full").glob("*.png"))[: args.grid_prompts]
            rows = {"full": files, method_dirs[0].name: [method_dirs[0] / f.name for f in files]}
            made.append(image_grid(rows, None, args.out / f"grid_{tag}.png", pdf=True))
        if (run / "selection.npz").exists():
            made.append(selection_figure(run / "selection.npz", args.out / f"selection_{tag}.png", pdf=True))
    for path in filter(None, made):
        print(path)


if __name__ == "__main__":
    main()
