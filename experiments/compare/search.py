"""Finding a method's setting for a compute target, and its best tuned setting, on calibration prompts.

- `bisect_knob` / `find_knob`: a continuous knob (a keep ratio, a threshold) whose executed-MACs reduction
  moves one way with it is set to a target reduction by bisection (`find_knob`: regula falsi).
- `offline_search`: the same for a method whose token schedule is known before it runs, searched on the
  schedule's token share and confirmed by a few MAC counts.
- `bracket_knob`: a discrete knob (an interval, a step count) gets the two values whose reductions
  bracket the target (matched compute mixes them per prompt, experiments.compare.matched).
- `warmup_bound`: the reduction a setting's leading full steps leave within reach (a target above it is
  skipped without running anything).
- `best`: among candidate settings that reach the target, the one with the best calibration score.

The callables passed in measure on calibration prompts only (the prompt set's calibration split);
nothing here sees an evaluation prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Found:
    """A knob value and the reduction it gives."""

    value: float
    reduction: float


def bisect_knob(reduction_of: Callable[[float], float], lo: float, hi: float, target: float, tol: float = 0.005,
                max_iter: int = 20) -> Found | None:
    """The knob value in [lo, hi] whose reduction is within `tol` of `target` (or the closest found after
    `max_iter` halvings), assuming the reduction is monotonic in the knob (either direction). None when
    the target lies outside [reduction_of(lo), reduction_of(hi)]: the method cannot reach it."""
    r_lo, r_hi = reduction_of(lo), reduction_of(hi)
    if not min(r_lo, r_hi) - tol <= target <= max(r_lo, r_hi) + tol:
        return None
    best = min((Found(lo, r_lo), Found(hi, r_hi)), key=lambda f: abs(f.reduction - target))
    rising = r_hi >= r_lo
    for _ in range(max_iter):
        if abs(best.reduction - target) <= tol:
            break
        mid = (lo + hi) / 2
        r_mid = reduction_of(mid)
        if abs(r_mid - target) < abs(best.reduction - target):
            best = Found(mid, r_mid)
        if (r_mid < target) == rising:
            lo = mid
        else:
            hi = mid
    return best


def bracket_knob(reductions: dict, target: float, tol: float = 0.005) -> tuple[Found, ...] | None:
    """For a discrete knob ({value: reduction}): the value at the target when one is within `tol`, else the
    two values nearest to it on either side; None when the target is out of reach."""
    found = [Found(v, r) for v, r in reductions.items()]
    if not found:
        return None
    nearest = min(found, key=lambda f: abs(f.reduction - target))
    if abs(nearest.reduction - target) <= tol:
        return (nearest,)
    below = [f for f in found if f.reduction < target]
    above = [f for f in found if f.reduction > target]
    if not below or not above:
        return None
    return (max(below, key=lambda f: f.reduction), min(above, key=lambda f: f.reduction))


def best(candidates: Sequence, score: Callable[[object], float | None]):
    """The candidate with the highest calibration score; candidates scored None (the target out of their
    reach) are passed over. None when no candidate reaches the target."""
    scored = [(s, i, c) for i, c in enumerate(candidates) if (s := score(c)) is not None]
    if not scored:
        return None
    return max(scored, key=lambda t: (t[0], -t[1]))[2]  # ties: the earlier (simpler) candidate


def find_knob(reduction_of: Callable[[float], float], lo: float, hi: float, target: float, tol: float = 0.005,
              max_iter: int = 8, known: dict | None = None, span: float | None = None) -> Found | None:
    """`bisect_knob` with the bracket cut where the line through its ends meets the target (regula falsi,
    Illinois rule) instead of at its middle: the same guarantee (the target stays bracketed) in a few
    evaluations when the reduction is nearly linear in the knob, as a keep ratio's is. Falls back to the
    middle when the line leaves the bracket's inner part (a stepwise reduction, such as a threshold's).

    `known` ({knob value: reduction}) holds what earlier searches of the same setting measured (another
    target's), and receives every value measured here: the search starts from the tightest bracket of the
    target among them, and ends at once when one of them is already within `tol`. With `span`, it also ends
    once two measured values bracket the target with reductions at most `span` apart (`bracket_knob` on
    `known` then gives the two real settings that matched compute mixes per prompt): a stepwise reduction
    (a threshold's: whole steps skipped) may have no value within `tol` at all."""
    known = {} if known is None else known

    def measure(value: float) -> float:
        if value not in known:
            known[value] = reduction_of(value)
        return known[value]

    r_lo, r_hi = measure(lo), measure(hi)
    if not min(r_lo, r_hi) - tol <= target <= max(r_lo, r_hi) + tol:
        return None
    inside = sorted((v, r) for v, r in known.items() if lo <= v <= hi)
    best = min((Found(v, r) for v, r in inside), key=lambda f: abs(f.reduction - target))
    f_lo, f_hi, side = r_lo - target, r_hi - target, 0
    for (a, r_a), (b, r_b) in zip(inside, inside[1:]):  # the first crossing from lo's side to hi's
        if (r_a - target > 0) == (f_lo > 0) and (r_b - target > 0) == (f_hi > 0):
            lo, hi, f_lo, f_hi = a, b, r_a - target, r_b - target
            break
    for _ in range(max_iter):
        if abs(best.reduction - target) <= tol or (span is not None and abs(known[hi] - known[lo]) <= span):
            break
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else (lo + hi) / 2
        if not lo + 0.02 * (hi - lo) <= mid <= hi - 0.02 * (hi - lo):
            mid = (lo + hi) / 2
        r_mid = measure(mid)
        if abs(r_mid - target) < abs(best.reduction - target):
            best = Found(mid, r_mid)
        f_mid = r_mid - target
        if (f_mid > 0) == (f_hi > 0):  # the target lies between lo and mid
            hi, f_hi = mid, f_mid
            if side == -1:
                f_lo /= 2
            side = -1
        else:
            lo, f_lo = mid, f_mid
            if side == 1:
                f_hi /= 2
            side = 1
    return best


def warmup_bound(config, num_steps: int) -> float:
    """The largest executed-MACs reduction a setting with `warmup_steps` leading full steps can reach:
    1 - W / N, were every later step free. A target above it is out of the setting's reach before anything
    runs. 1 where the setting names no warm-up (fewer steps; MagCache's warm-up from its retention ratio)."""
    warmup = getattr(config, "warmup_steps", None)
    return 1.0 - warmup / num_steps if isinstance(warmup, int) and not isinstance(warmup, bool) else 1.0


def token_share_reduction(config, num_steps: int, num_tokens: int) -> float:
    """1 - the share of image tokens the method recomputes over the schedule (its offline schedule): a guide
    for the knob search that costs no model call; the MAC counter has the last word."""
    schedule = config.offline_schedule(num_steps, num_tokens)
    return 1.0 - sum(schedule) / (num_steps * num_tokens)


def offline_search(config_of, reduction, lo: float, hi: float, target: float, tol: float, num_steps: int,
                   num_tokens: int, rounds: int = 4, learned: dict | None = None):
    """The knob search for a method whose token schedule is known before it runs: the knob is found on the
    token-share reduction (no model call), the MAC counter counts that setting, and the token-share target is
    moved by the counter's miss; a few counts instead of one per bisection step. `learned` carries the last
    miss from one search to the next (the token share and the MACs differ by a nearly constant offset for one
    method), so most searches need one count. None when this does not reach the target within `tol` (the
    caller then bisects on counted MACs)."""
    share = lambda v: finite(safe(lambda: token_share_reduction(config_of(v), num_steps, num_tokens)))  # noqa: E731
    learned = {} if learned is None else learned
    aim, best = target + learned.get("offset", 0.0), None
    for _ in range(rounds):
        guess = find_knob(share, lo, hi, aim, tol / 4, max_iter=40)
        if guess is None:
            break
        counted = Found(guess.value, reduction(config_of(guess.value)))
        if best is None or abs(counted.reduction - target) < abs(best.reduction - target):
            best = counted
        learned["offset"] = aim + (target - counted.reduction) - target
        if abs(counted.reduction - target) <= tol:
            break
        aim += target - counted.reduction
    return best if best is not None and abs(best.reduction - target) <= tol else None


def safe(fn) -> float:
    """fn(), or NaN when it raises ValueError (a knob value the method refuses)."""
    try:
        return fn()
    except ValueError:
        return float("nan")


def finite(value: float) -> float:
    return value if np.isfinite(value) else -1.0  # an invalid knob value counts as out of reach
