"""A sweep's contrast report: the reference cells (`paired_reference`) against the cells a sweep file names,
paired over prompts, along one swept axis with one line per value of another. The sweep file declares it:

    contrast:
      name: clustering                  # writes clustering.md and clustering.png
      cells: method=cat_no_cluster      # "column=value": the cells contrasted with the reference cells
      x: method.config.<a swept field>  # the x axis
      lines: method.config.num_clusters # one line per value
      higher: clustering helps          # the verdict when reference - cells is above 0 (and `lower` below)

- `<name>.png`: the paired differences reference - cells in every per-image metric the sweep measured
  (PSNR first; 95% bootstrap bands over prompts) against `x`, one line per value of `lines`.
- `<name>.md`: the same numbers as tables, with a verdict per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..metrics.registry import Metric, objective, ordered


def _gain(metric: Metric) -> str:
    """"PSNR gain (dB)": the axis of a difference in `metric`."""
    return f"{metric.short} gain" + (f" ({metric.unit})" if metric.unit else "")


@dataclass(frozen=True)
class Contrast:
    name: str
    cells: str
    x: str
    lines: str
    higher: str = "reference higher"
    lower: str = "reference lower"

    @property
    def column(self) -> str:
        return self.cells.partition("=")[0]

    @property
    def value(self) -> str:
        return self.cells.partition("=")[2]


def contrast_table(paired: pd.DataFrame, contrast: Contrast, metric: str) -> pd.DataFrame:
    """paired.csv rows (cells - reference) turned around: reference - cells, with its interval."""
    rows = paired[paired[contrast.column].astype(str) == contrast.value]
    out = pd.DataFrame({
        "x": pd.to_numeric(rows[contrast.x]), "line": pd.to_numeric(rows[contrast.lines]),
        f"d_{metric}": -rows[f"d_{metric}"], f"d_{metric}_lo": -rows[f"d_{metric}_hi"],
        f"d_{metric}_hi": -rows[f"d_{metric}_lo"], "prompts": rows["prompts"],
    })
    out["verdict"] = [contrast.higher if lo > 0 else contrast.lower if hi < 0 else "no difference"
                      for lo, hi in zip(out[f"d_{metric}_lo"], out[f"d_{metric}_hi"])]
    short = {"x": contrast.x.rsplit(".", 1)[-1], "line": contrast.lines.rsplit(".", 1)[-1]}
    return out.sort_values(["line", "x"]).reset_index(drop=True).rename(columns=short)


def write_report(paired: pd.DataFrame, sweep_dir: Path, contrast: Contrast, reference: str,
                 title: str = "") -> pd.DataFrame:
    """<name>.md and <name>.png for every metric in `paired` (the objective, PSNR, first); returns the
    objective's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = {m.name: m for m in ordered(per_image=True) if f"d_{m.name}" in paired}
    metrics = list(specs)
    tables = {m: contrast_table(paired, contrast, m) for m in metrics}
    goal = objective().name
    if goal not in tables or tables[goal].empty:
        return pd.DataFrame()
    sweep_dir = Path(sweep_dir)
    x, line = contrast.x.rsplit(".", 1)[-1], contrast.lines.rsplit(".", 1)[-1]
    difference = f"{reference.rpartition('=')[2]} - {contrast.value}"
    text = [f"Paired differences to the full model, {difference}, per prompt on the same prompts and seeds, "
            f"mean and 95% bootstrap interval; above 0: {contrast.higher}."]
    for m in metrics:
        text += [f"\n### {m}\n", tables[m].to_markdown(index=False, floatfmt=".3g")]
    (sweep_dir / f"{contrast.name}.md").write_text("\n".join(text) + "\n")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for value, rows in tables[m].groupby(line):
            drawn, = ax.plot(rows[x], rows[f"d_{m}"], marker="o", label=f"{line}={value}")
            ax.fill_between(rows[x], rows[f"d_{m}_lo"], rows[f"d_{m}_hi"], color=drawn.get_color(), alpha=0.15)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{_gain(specs[m])}, {difference}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or f"{difference}, paired over prompts (95% band)", fontsize=10)
    fig.tight_layout()
    fig.savefig(sweep_dir / f"{contrast.name}.png", dpi=150)
    plt.close(fig)
    return tables[goal]
