"""Intervals over prompts: every quality figure is a mean over prompts with its 95% bootstrap
interval, and methods are compared by paired differences on the same prompts and seeds.

The bootstrap is scipy's (`scipy.stats.bootstrap`, percentile method, fixed seed, so a table
regenerates identically). A difference whose interval contains 0 is reported as no difference.
Many paired tests in one report are controlled together: a bootstrap p-value per test from the same resamples
as its interval (`bootstrap_p`), and Holm's step-down over the family (`holm`).
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def mean_ci(values, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the mean over prompts; the interval is (mean, mean) for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if not np.all(np.isfinite(x)):
        # dropping them would change the prompts a mean is over (and drop the best images of a PSNR)
        raise ValueError(f"{int(np.sum(~np.isfinite(x)))} of {x.size} values are not finite; a per-image metric "
                         "must give a finite value for every prompt (PSNR gives identical images its ceiling)")
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


def bootstrap_p(resampled) -> float:
    """Two-sided bootstrap p-value of "the mean difference is 0", from the resampled mean differences whose
    percentiles give the paired interval: twice the smaller share of resamples on either side of 0, each share
    counted with the +1 correction, (1 + k) / (B + 1), so no p-value is 0 (capped at 1). p <= 0.05 implies that
    the 95% percentile interval of the same resamples excludes 0."""
    d = np.asarray(resampled, dtype=float)
    share = lambda k: (1 + k) / (d.size + 1)  # noqa: E731
    return float(min(1.0, 2 * min(share(np.count_nonzero(d <= 0)), share(np.count_nonzero(d >= 0)))))


def holm(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm-Bonferroni step-down over one family of tests: (adjusted p-values, rejected), in the given order.
    Sorted ascending, the i-th smallest of m p-values is adjusted to max over j <= i of min(1, (m - j + 1) p_(j))
    (1-based), and a test is rejected where its adjusted p-value is at most `alpha`: the family-wise error rate
    stays at most `alpha` whatever the dependence between the tests. NaN entries are no tests: they stay NaN and
    are never rejected (nor counted in m)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return adjusted, np.nan_to_num(adjusted, nan=np.inf) <= alpha
