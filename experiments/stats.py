"""Intervals over prompts: every quality figure is a mean over prompts with its 95% bootstrap
interval, and methods are compared by paired differences on the same prompts and seeds.

The bootstrap is scipy's (`scipy.stats.bootstrap`, percentile method, fixed seed, so a table
regenerates identically). A difference whose interval contains 0 is reported as no difference.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def mean_ci(values, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the mean over prompts; the interval is (mean, mean) for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return mean, mean, mean
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=True)
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_ci(a, b, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the per-prompt difference a - b (same prompts, same seeds, same order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same prompts: {a.shape} vs {b.shape}")
    return mean_ci(a - b, confidence, seed)


def verdict(lo: float, hi: float) -> str:
    """'higher' / 'lower' when the interval of a difference excludes 0, else 'no difference'."""
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "no difference"


def per_image(cell_dir, metric: str) -> dict[int, float]:
    """A sweep cell's per-prompt values of `metric` for its method's images (from records.jsonl)."""
    import json
    from pathlib import Path

    path = Path(cell_dir) / "records.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["index"]: r[metric] for r in rows if r.get("variant") != "full" and metric in r}


def paired_against(frame, sweep_dir, reference: str | None = None, metrics=("psnr", "ssim", "lpips", "adherence")):
    """Paired per-prompt differences (cell - reference cell) with 95% intervals, for every finished
    cell that differs from the reference on one column and has a reference cell equal on every other
    swept axis. `reference` is a method name, or "column=value" (e.g. "method.config.legacy=[]");
    default: conf/config.yaml's `paired_reference`. Returns a DataFrame (empty when there is nothing to pair)."""
    from pathlib import Path

    import pandas as pd

    from .config_files import default_setting

    reference = reference or str(default_setting("paired_reference"))

    column, _, value = reference.rpartition("=") if "=" in reference else ("method", "", reference)
    if column not in frame or "status" not in frame:
        return pd.DataFrame()
    done = frame[frame.status == "done"]
    axes = [c for c in frame.columns if c not in ("cell", "error", "status", column)
            and not pd.api.types.is_numeric_dtype(frame[c]) and frame[c].nunique() > 1]
    is_ref = done[column].astype(str) == value
    refs = done[is_ref]
    rows = []
    for _, cell in done[~is_ref].iterrows():
        match = refs
        for axis in axes:
            match = match[match[axis].astype(str) == str(cell[axis])]
        if len(match) != 1:
            continue
        ref = match.iloc[0]
        row = {column: cell[column], **{a: cell[a] for a in axes}, "cell": cell.cell, "reference": ref.cell}
        for metric in metrics:
            a, b = per_image(Path(sweep_dir) / cell.cell, metric), per_image(Path(sweep_dir) / ref.cell, metric)
            common = sorted(set(a) & set(b))
            if len(common) < 2:
                continue
            mean, lo, hi = paired_ci([a[i] for i in common], [b[i] for i in common])
            row.update({f"d_{metric}": mean, f"d_{metric}_lo": lo, f"d_{metric}_hi": hi,
                        f"{metric}_verdict": verdict(lo, hi), "prompts": len(common)})
        rows.append(row)
    return pd.DataFrame(rows)
