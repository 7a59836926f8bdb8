"""Methods compared at matched compute, with paired verdicts.

A method reaches a compute target (a reduction of executed MACs, e.g. 0.5 = half the full model's) in
one of two ways:

- a cell run at the target (a continuous knob found by bisection): its reduction lies within `tol`;
- otherwise the two cells whose reductions bracket the target (a discrete knob: FORA's interval, the
  step count). Its value at the target is that of a per-prompt mixture: the run that gives each prompt
  setting A with probability 1 - w and setting B with probability w spends, in expectation, the target's
  MACs. w comes from the cells' mean reductions, so it is recomputed inside each bootstrap resample of
  the prompts, together with the quality of both cells on the same resampled prompts. A fractional knob
  value is never a setting: the setting is named as the mixture (`interval=2 (40%) + interval=3 (60%)`).
  Both settings must save MACs: a setting that saves nothing on any prompt (the full model's computation, a
  keep ratio of 1, ToCa's `fresh_ratio=1`) is never mixed in (`saves_nothing`). Its images are the full model's,
  whose PSNR is a ceiling that only keeps identical images finite (89 dB at 64x64), so its share of a mixture's
  mean PSNR would be set by that constant, not by the method: 27% of the prompts at the ceiling and the rest at
  24.6 dB averages 42.3 dB. A method whose settings jump from nothing saved to past the target does not reach it.
  A setting that saves a little and is nearly exact (a measured 80 dB at 0.1% fewer MACs) is a setting and may be
  mixed: the mean of PSNR in dB still favours such a pair over one setting in between (a known limit of the
  metric, which per-prompt mixing does not cause but exposes; docs/measurement.md).

Every method is compared with a reference (CAT) at the same target on the same prompts and seeds: the
paired difference `d` (method - reference) gets a percentile bootstrap interval over prompts, and a
verdict: `better` or `worse` when the 95% interval excludes 0 (in the metric's good direction),
`equivalent` when the 90% interval lies inside +-margin (the metric's registered margin: 0.5 dB of PSNR),
else `undetermined`. A tie is only ever `equivalent`: overlapping per-method intervals say nothing.
Each paired test also gets a bootstrap p-value from the same resamples, for the report's Holm correction over
all its tests (`experiments.reports.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base.intervals import bootstrap_p
from ..metrics.registry import spec

RESAMPLES = 2000
NOTHING_SAVED = 1e-9  # a reduction at or below this on every prompt: the setting computed what the full model does


def saves_nothing(reduction) -> bool:
    """Whether a setting whose executed-MACs reduction is `reduction` (one value, or one per prompt) saved nothing
    on any prompt: never a component of a mixture (see the module docstring)."""
    return bool(np.all(np.asarray(reduction, dtype=float) <= NOTHING_SAVED))


def mixable(below: "Cell", above: "Cell", target: float) -> bool:
    """Whether two cells can be mixed per prompt to reach `target`: both save MACs and their mean reductions
    bracket the target (a mixture of two cells on one side of it would be clipped to one of them, and its row
    would be labelled with a target it does not reach)."""
    a, b = below.reduction.mean(), above.reduction.mean()
    return not saves_nothing(below.reduction) and not saves_nothing(above.reduction) and min(a, b) <= target <= max(a, b)


@dataclass(frozen=True)
class Cell:
    """One run of a method at one setting, on the shared prompts (one order for every cell)."""

    setting: str  # how the run was made, e.g. "interval=3"
    reduction: np.ndarray  # [P] executed-MACs reduction per prompt (the cell's own value repeated if not per prompt)
    values: dict[str, np.ndarray]  # metric -> [P]

    @classmethod
    def of(cls, setting: str, reduction, values: dict) -> "Cell":
        values = {k: np.asarray(v, dtype=float) for k, v in values.items()}
        sizes = {v.shape for v in values.values()}
        if len(sizes) != 1:
            raise ValueError(f"{setting}: every metric needs one value per prompt, got shapes {sizes}")
        (shape,) = sizes
        if not np.all(np.isfinite(np.asarray(reduction, dtype=float))):  # NaN is on neither side of a target
            raise ValueError(f"{setting}: the executed-MACs reduction is not finite for every prompt")
        bad = sorted(k for k, v in values.items() if not np.all(np.isfinite(v)))
        if bad:  # a mixture or an interval over them would be inf or NaN, a leader named by +inf
            raise ValueError(f"{setting}: {', '.join(bad)} not finite for every prompt (runs made before PSNR gave "
                             "identical images its ceiling: rerun them)")
        return cls(setting, np.broadcast_to(np.asarray(reduction, dtype=float), shape).copy(), values)


@dataclass(frozen=True)
class AtTarget:
    """How a method reaches a target: one cell, or two cells mixed per prompt."""

    target: float
    cells: tuple[Cell, ...]

    def __post_init__(self) -> None:
        if len(self.cells) == 2 and not mixable(*self.cells, self.target):
            raise ValueError(f"{self.cells[0].setting} and {self.cells[1].setting} cannot be mixed to reach "
                             f"{self.target:.0%} fewer MACs: a mixture needs two settings that each save MACs on "
                             "some prompt and whose reductions bracket the target (experiments.compare.matched)")
        if len(self.cells) not in (1, 2):
            raise ValueError(f"a target is reached by one cell or a mixture of two, not {len(self.cells)}")

    @property
    def setting(self) -> str:
        if len(self.cells) == 1:
            return self.cells[0].setting
        w = mixture_weight(self.target, self.cells[0].reduction.mean(), self.cells[1].reduction.mean())
        return f"{self.cells[0].setting} ({1 - w:.0%}) + {self.cells[1].setting} ({w:.0%})"

    @property
    def reduction(self) -> float:
        """The mean executed-MACs reduction over the prompts: the cell's, or the mixture's (the target)."""
        if len(self.cells) == 1:
            return float(self.cells[0].reduction.mean())
        a, b = (c.reduction.mean() for c in self.cells)
        w = mixture_weight(self.target, a, b)
        return float((1 - w) * a + w * b)

    def means(self, metric: str, idx: np.ndarray) -> np.ndarray:
        """The method's mean of `metric` at the target over the prompts of each resample.  idx [B, P] -> [B]"""
        if len(self.cells) == 1:
            return self.cells[0].values[metric][idx].mean(axis=1)
        a, b = self.cells
        w = mixture_weight(self.target, a.reduction[idx].mean(axis=1), b.reduction[idx].mean(axis=1))
        return (1 - w) * a.values[metric][idx].mean(axis=1) + w * b.values[metric][idx].mean(axis=1)


def mixture_weight(target, below, above):
    """w such that (1 - w) * below + w * above = target (clipped to [0, 1])."""
    below, above = np.asarray(below, dtype=float), np.asarray(above, dtype=float)
    span = np.where(above == below, 1.0, above - below)
    return np.clip((target - below) / span, 0.0, 1.0)


def at_target(cells: list[Cell], target: float, tol: float = 0.01) -> AtTarget | None:
    """A method's way to the target: the cell nearest to it when within `tol`, else the nearest cell on
    each side among those that save MACs (`saves_nothing`); None when the method has no such cell on one side
    (it cannot reach the target)."""
    if not cells:
        return None
    nearest = min(cells, key=lambda c: abs(c.reduction.mean() - target))
    if abs(nearest.reduction.mean() - target) <= tol:
        return AtTarget(target, (nearest,))
    saving = [c for c in cells if not saves_nothing(c.reduction)]
    below = [c for c in saving if c.reduction.mean() < target]
    above = [c for c in saving if c.reduction.mean() > target]
    if not below or not above:
        return None
    return AtTarget(target, (max(below, key=lambda c: c.reduction.mean()), min(above, key=lambda c: c.reduction.mean())))


def family_resamples(tests: int, alpha: float = 0.05) -> int:
    """Bootstrap resamples for a report whose p-values go through Holm's step-down over `tests` tests. A bootstrap
    p-value is at least 2 / (B + 1) (`experiments.base.intervals.bootstrap_p`), so with B = 2000 a family of more
    than 50 tests could never reject anything, however large the differences: B >= 10 tests / alpha puts the
    smallest attainable adjusted p-value at alpha / 5."""
    return max(RESAMPLES, int(np.ceil(10 * tests / alpha)))


def resamples(num_prompts: int, n: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Prompt indices of `n` bootstrap resamples, the full sample first.  -> [n + 1, P]"""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(num_prompts)[None], rng.integers(0, num_prompts, (n, num_prompts))])


def interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def verdict(d95: tuple[float, float], d90: tuple[float, float], margin: float, lower_is_better: bool = False) -> str:
    """better / worse when the 95% interval of the paired difference excludes 0 (in the metric's good
    direction), equivalent when its 90% interval lies within +-margin, else undetermined."""
    lo, hi = d95
    if lo > 0 or hi < 0:
        return "worse" if (lo > 0) == lower_is_better else "better"
    if -margin <= d90[0] and d90[1] <= margin:
        return "equivalent"
    return "undetermined"


def compare(method: AtTarget, reference: AtTarget | None, metric: str, idx: np.ndarray,
            margin: float | None = None) -> dict:
    """The method's mean at the target with its 95% interval, and its paired difference with the
    reference (same resamples) with its two-sided bootstrap p-value (`p`, from the same resamples: the family's
    multiplicity control, `experiments.base.intervals.holm`, reads it) and the verdict. idx from `resamples`
    (row 0: the full sample)."""
    means = method.means(metric, idx)
    lo, hi = interval(means[1:], 0.95)
    out = {metric: float(means[0]), f"{metric}_lo": lo, f"{metric}_hi": hi}
    if reference is None:
        return out
    d = means - reference.means(metric, idx)
    d95, d90 = interval(d[1:], 0.95), interval(d[1:], 0.90)
    registered = spec(metric)
    if margin is None:
        margin = registered.margin if registered else 0.0
    out.update({"d": float(d[0]), "d_lo": d95[0], "d_hi": d95[1], "d_lo90": d90[0], "d_hi90": d90[1],
                "p": bootstrap_p(d[1:]), "within_margin": bool(-margin <= d90[0] and d90[1] <= margin),
                "verdict": verdict(d95, d90, margin, bool(registered and registered.lower_is_better))})
    return out
