"""The clustering sweep's report: does cluster-aware selection beat the same selection without
clusters (`cat_no_cluster`: the cluster share taken from the globally noisiest tokens)?

- `clustering.png`: the paired differences cat - no_cluster in PSNR (dB), SSIM and adherence (whichever
  the sweep measured; 95% bootstrap bands over prompts) against the keep ratio, one line per cluster
  count; above 0 clustering helps.
- `clustering.md`: the same numbers as tables, with a verdict per cell.
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


LABELS = {"psnr": "PSNR gain (dB)", "ssim": "SSIM gain", "adherence": "adherence gain"}


def write_report(paired: pd.DataFrame, sweep_dir: Path, title: str = "") -> pd.DataFrame:
    """clustering.md and clustering.png for every metric in `paired` (PSNR first); returns the PSNR table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in LABELS if f"d_{m}" in paired]
    tables = {m: cat_minus_no_cluster(paired, m) for m in metrics}
    if "psnr" not in tables or tables["psnr"].empty:
        return pd.DataFrame()
    sweep_dir = Path(sweep_dir)
    text = ["Paired differences to the full model, cat - no_cluster, per prompt on the same prompts and seeds, "
            "mean and 95% bootstrap interval; above 0 the clusters help."]
    for m in metrics:
        text += [f"\n### {m}\n", tables[m].to_markdown(index=False, floatfmt=".3g")]
    (sweep_dir / "clustering.md").write_text("\n".join(text) + "\n")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for clusters, rows in tables[m].groupby("clusters"):
            line, = ax.plot(rows.keep_ratio, rows[f"d_{m}"], marker="o", label=f"{clusters} clusters")
            ax.fill_between(rows.keep_ratio, rows[f"d_{m}_lo"], rows[f"d_{m}_hi"], color=line.get_color(), alpha=0.15)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("keep ratio (share of image tokens\nrecomputed per pruned step)")
        ax.set_ylabel(f"{LABELS[m]} from clustering")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or "cat - no_cluster, paired over prompts (95% band)", fontsize=10)
    fig.tight_layout()
    fig.savefig(sweep_dir / "clustering.png", dpi=150)
    plt.close(fig)
    return tables["psnr"]
