"""The clustering sweep's report: does cluster-aware selection beat the same selection without
clusters (`cat_no_cluster`: the cluster share taken from the globally noisiest tokens)?

- `clustering.png`: the paired PSNR difference cat - no_cluster (dB, 95% bootstrap band over prompts)
  against the keep ratio, one line per cluster count; above 0 clustering helps.
- `clustering.md`: the same numbers as a table, with a verdict per cell.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

KEEP, CLUSTERS = "method.config.keep_ratio", "method.config.num_clusters"


def is_clustering_sweep(frame: pd.DataFrame) -> bool:
    return ("method" in frame and set(frame["method"].dropna()) == {"cat", "cat_no_cluster"}
            and KEEP in frame and CLUSTERS in frame)


def cat_minus_no_cluster(paired: pd.DataFrame, metric: str = "psnr") -> pd.DataFrame:
    """paired.csv rows (no_cluster - cat) turned around: cat - no_cluster, with its interval."""
    rows = paired[paired.method == "cat_no_cluster"]
    out = pd.DataFrame({
        "keep_ratio": rows[KEEP].astype(float), "clusters": rows[CLUSTERS].astype(int),
        f"d_{metric}": -rows[f"d_{metric}"], f"d_{metric}_lo": -rows[f"d_{metric}_hi"],
        f"d_{metric}_hi": -rows[f"d_{metric}_lo"], "prompts": rows["prompts"],
    })
    out["verdict"] = ["clustering helps" if lo > 0 else "clustering hurts" if hi < 0 else "no difference"
                      for lo, hi in zip(out[f"d_{metric}_lo"], out[f"d_{metric}_hi"])]
    return out.sort_values(["clusters", "keep_ratio"]).reset_index(drop=True)


def write_report(paired: pd.DataFrame, sweep_dir: Path, title: str = "") -> pd.DataFrame:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = cat_minus_no_cluster(paired)
    if table.empty:
        return table
    sweep_dir = Path(sweep_dir)
    (sweep_dir / "clustering.md").write_text(
        "Paired PSNR difference to the full model, cat - no_cluster (dB), per prompt on the same prompts and "
        "seeds, mean and 95% bootstrap interval; above 0 the clusters help.\n\n"
        + table.to_markdown(index=False, floatfmt=".3g") + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for clusters, rows in table.groupby("clusters"):
        line, = ax.plot(rows.keep_ratio, rows.d_psnr, marker="o", label=f"{clusters} clusters")
        ax.fill_between(rows.keep_ratio, rows.d_psnr_lo, rows.d_psnr_hi, color=line.get_color(), alpha=0.15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("keep ratio (share of image tokens recomputed per pruned step)")
    ax.set_ylabel("PSNR gain from clustering (dB)")
    ax.set_title(title or "cat - no_cluster, paired over prompts (95% band)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sweep_dir / "clustering.png", dpi=150)
    plt.close(fig)
    return table
