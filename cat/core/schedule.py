"""Step schedules of a forecasting cache, and their search under a compute budget (pure Python).

A schedule is a string with one action per denoising step: "F" full (every cached module runs and its
forecast factors are refreshed), "f" forecast (no cached module runs), "c" corrected (forecast, and the
image MLPs also run on K tokens whose exact outputs correct the forecast).

The search (`search_schedule`) is a shortest path over a DAG of segments, as LeMiCa (Gao et al., NeurIPS
2025, arXiv 2511.00090) plans cache reuse: the nodes are the steps and the end of sampling, an edge i -> j
is a full step i followed by j - i - 1 skipped steps of one kind (forecast or corrected), and its weight is
that segment's measured error. LeMiCa weighs an edge by the final output's L1 error with only that segment
cached and bounds the number of full steps; here the weight is the segment's contribution to the final
latent's squared error (measured with teacher forcing, see `cat.methods.forecast_search`), the path cost is
their sum, and the bound is the executed MACs of all steps (full, corrected and forecast steps each cost
what the MAC counter measured), so a path may trade a full step for corrected steps. The search is exact:
a dynamic program over (step, full steps so far, corrected steps so far).

Costs are given per kind as `costs[i][L - 1]`: the error of the segment that starts with a full step at i
and skips the L steps i+1 .. i+L (L = 1 .. max_skip), the next full step being i+L+1 or the end.
"""

from __future__ import annotations

import math
from typing import Sequence

FULL, FORECAST, CORRECTED = "F", "f", "c"
ACTIONS = (FULL, FORECAST, CORRECTED)


def check_actions(actions: str, num_steps: int | None = None) -> None:
    """ValueError unless `actions` is a schedule (of `num_steps` steps) starting with a full step."""
    if not actions or set(actions) - set(ACTIONS) or actions[0] != FULL:
        raise ValueError(f"a schedule is one of {', '.join(ACTIONS)} per step, starting with {FULL}; got {actions!r}")
    if num_steps is not None and len(actions) != num_steps:
        raise ValueError(f"the schedule {actions!r} has {len(actions)} steps, the run {num_steps}")


def schedule_macs(actions: str, macs: dict[str, float]) -> float:
    """The MACs of a schedule, `macs` holding each action's MACs."""
    return sum(macs[a] for a in actions)


def segments(actions: str) -> list[tuple[int, int, str]]:
    """(i, L, kind) for every full step i followed by L >= 1 skipped steps all of one kind."""
    out = []
    full = [s for s, a in enumerate(actions) if a == FULL]
    for i, j in zip(full, full[1:] + [len(actions)]):
        kinds = set(actions[i + 1:j])
        if len(kinds) == 1:
            out.append((i, j - i - 1, kinds.pop()))
    return out


def regular_schedule(num_steps: int, gap: int, offset: int, kind: str) -> str:
    """Full steps 0 .. offset-1 and every `gap`-th step from `offset` on, `kind` in between: the schedule that
    measures the segments of gap - 1 skipped steps after the full steps offset, offset + gap, ..."""
    return "".join(FULL if s < offset or (s - offset) % gap == 0 else kind for s in range(num_steps))


def even_schedule(num_steps: int, warmup: int, num_full: int, kind: str) -> str:
    """Steps 0 .. warmup-1 full, then num_full - warmup more full steps spread evenly (the end of sampling
    counting as the next full step), `kind` in between: a fixed interval, no search."""
    extra = max(0, min(num_full, num_steps) - warmup)
    span = num_steps - warmup + 1
    full = set(range(warmup)) | {warmup - 1 + round(k * span / (extra + 1)) for k in range(1, extra + 1)}
    return "".join(FULL if s in full else kind for s in range(num_steps))


def even_within(num_steps: int, warmup: int, kind: str, macs: dict[str, float], limit: float) -> str:
    """The `even_schedule` with the most full steps whose MACs stay within `limit` (the warm-up alone when
    even it does not fit: the cheapest schedule with that warm-up)."""
    best = even_schedule(num_steps, warmup, warmup, kind)
    for num_full in range(warmup + 1, num_steps + 1):
        actions = even_schedule(num_steps, warmup, num_full, kind)
        if schedule_macs(actions, macs) > limit * (1 + 1e-12):
            break
        best = actions
    return best


def search_schedule(costs: dict[str, Sequence[Sequence[float | None]]], macs: dict[str, float], num_steps: int,
                    limit: float, warmup: int = 1, max_skip: int | None = None) -> tuple[str, float] | None:
    """The schedule of least total segment cost whose MACs stay within `limit`, and that cost.

    `costs` maps a skipped kind ("f" and, to allow corrected segments, "c") to its segment costs
    `costs[kind][i][L - 1]` (None: not measured); `macs` maps every action to its MACs. Steps 0 .. warmup-1
    are full; at most `max_skip` steps in a row are skipped. None when no schedule fits the limit.
    Exact: a dynamic program over (step, full steps so far, corrected steps so far), ties broken by fewer
    MACs, then by the earlier decision.
    """
    kinds = [k for k in (FORECAST, CORRECTED) if k in costs]
    longest = max((len(row) for k in kinds for row in costs[k]), default=0)
    max_skip = longest if max_skip is None else min(max_skip, longest)
    cheapest = min(macs[k] for k in (FULL, *kinds))

    def spent(full: int, corrected: int, steps: int) -> float:
        return full * macs[FULL] + corrected * macs.get(CORRECTED, 0.0) + (steps - full - corrected) * macs[FORECAST]

    # best[j][(F, C)] = (cost, previous full step, previous state, kind): a full step at j (or the end, j = N)
    best: list[dict] = [dict() for _ in range(num_steps + 1)]
    start = min(warmup, num_steps)
    best[start - 1][(start, 0)] = (0.0, None, None, None)
    for i in range(start - 1, num_steps):
        for (full, corrected), (cost, *_) in sorted(best[i].items()):
            for skipped in range(0, max_skip + 1):
                j = i + skipped + 1
                if j > num_steps:
                    break
                for kind in (kinds if skipped else [FORECAST]):
                    if skipped:
                        row = costs[kind][i] if i < len(costs[kind]) else ()
                        weight = row[skipped - 1] if skipped <= len(row) else None
                        if weight is None or not math.isfinite(weight):
                            continue
                    else:
                        weight = 0.0
                    state = (full + (j < num_steps), corrected + (skipped if kind == CORRECTED else 0))
                    # what the rest costs at least: every later step at the cheapest action
                    if spent(*state, j) + (num_steps - j) * cheapest > limit * (1 + 1e-12):
                        continue
                    total = cost + weight
                    old = best[j].get(state)
                    if old is None or total < old[0]:
                        best[j][state] = (total, i, (full, corrected), kind)
    ends = [(cost, spent(*state, num_steps), state) for state, (cost, *_) in best[num_steps].items()
            if spent(*state, num_steps) <= limit * (1 + 1e-12)]
    if not ends:
        return None
    cost, _, state = min(ends)
    actions = [FULL] * num_steps
    j = num_steps
    while True:
        _, i, previous, kind = best[j][state]
        if i is None:
            break
        for s in range(i + 1, j):
            actions[s] = kind
        j, state = i, previous
    return "".join(actions), cost


def resample_costs(costs: Sequence[Sequence[float | None]], num_steps: int) -> list[list[float | None]]:
    """Segment costs measured at another step count, read at `num_steps` steps: each step takes the costs of
    the measured step at the same place in the schedule (nearest), segment lengths as measured. An
    approximation, for reusing a calibration at another step count."""
    measured = len(costs)
    if measured == num_steps:
        return [list(row) for row in costs]
    scale = (measured - 1) / max(1, num_steps - 1)
    return [list(costs[min(measured - 1, round(s * scale))]) for s in range(num_steps)]
