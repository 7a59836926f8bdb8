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
