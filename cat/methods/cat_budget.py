"""`cat_budget`: CAT with a token budget that moves across the pruned steps (and, optionally, forecast
module outputs for the tokens a step leaves out).

Two changes to CAT, each off by default (the defaults are plain CAT, bit for bit). Measured on the
embedded default model (docs/results.md, "A CAT variant at equal compute"): a falling budget beats flat
CAT at equal MACs; the forecast loses to copying at every setting tried, and costs one more output
cache per module.

1. Budget schedule (`schedule_slope`, `schedule_block`). The pruned steps recompute K_j tokens instead
   of a flat K, with the same total: sum_j K_j = (pruned steps) x K, K from CAT's keep ratio, which stays
   the knob that sets the compute. The shape is a line through the mean K, from K (1 + slope) at the
   first pruned step to K (1 - slope) at the last (slope > 0: high early, low late), averaged over
   blocks of `schedule_block` steps so that K_j is piecewise constant (few distinct token counts, each
   one compiled graph), kept in [1, N - 1] and rounded so that the total is exact (the last block's
   steps may differ by one token). Each step's selection (cluster share, quotas, stale tokens) is CAT's
   at that step's budget.

2. Forecast (`forecast`, `forecast_max`, `forecast_time`). An unselected token's attention and
   feed-forward outputs (before the gates) are extrapolated to the current step from the token's own
   last two computations, at their own times:
       o_hat = o_last + rho (o_last - o_prev),  rho = forecast x min(forecast_max, (t - t_last) / (t_last - t_prev))
   with t the step index (`forecast_time="step"`, as TaylorSeer and ToCa count) or the pipeline's
   timestep (`"timestep"`: sigma x 1000 on SD3, whose spacing grows under a shifted schedule). rho is 0
   at the tokens recomputed in the step, so their outputs are exact. The forecast only reaches the
   image if the unselected tokens' final outputs are not replaced by the previous step's (CAT's output
   caching, which would overwrite them), so a forecast switches output caching off (`output_caching`,
   null = off exactly when forecasting): unselected tokens then run through every block with this
   step's gates, residuals and norms, as in TaylorSeer and ToCa, per token.
   Every token has two computations when pruning starts: the warm-up's last two steps both fill the
   caches (t0-2 and t0-1; no extra MACs).

Where it lives: the timeline below computes rho once per pruned step ([B, N, 1], in a buffer allocated
once and updated in place, `Buffers.rho`, on the device, no host synchronisation) and keeps each token's last two times
([2, P, N]); the engine's modules apply it (`cat.engine.tokens.update_output`), reading
`GenerationState.forecast`, with one more cache per module: `LayerCache.prev`, each token's output
before its newest one, updated in place. Extra bytes: the sum over cached modules of B x N x C x
(element size) (one more output buffer per module; FLUX's single-stream blocks hold text rows too),
plus B x N x 4 (rho) and 2 x P x N x 4 (times). Under torch.compile the forecast is part of the pruned
step's graph; rho is an input tensor of a fixed shape, so forecasting adds no graph, and the schedule
adds one per distinct budget.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..engine.state import GenerationState
from ..engine.tokens import fits, keep, static
from . import cat as plain
from .base import check, is_int, is_num, register
from .cat import CATConfig, CATHandle

FORECAST_TIMES = ("step", "timestep")


@register
@dataclass(frozen=True)
class CATBudgetConfig(CATConfig):
    """CAT's settings plus a budget schedule across the pruned steps and forecast module outputs.

    Attributes:
        schedule_slope: shape of the per-step budget, in [-1, 1]: K (1 + slope) at the first pruned step
            falling linearly to K (1 - slope) at the last, with the flat schedule's total (0: flat, CAT;
            negative: rising).
        schedule_block: pruned steps per block of equal budget (the schedule is piecewise constant).
        forecast: damping lambda of the first-order forecast of unselected tokens' module outputs, in
            [0, 2] (0: no forecast, CAT's reuse; 1: full first order).
        forecast_max: the largest extrapolation ratio (t - t_last) / (t_last - t_prev) used (1: never
            further ahead than the two computations are apart).
        forecast_time: the time the forecast extrapolates in: "step" (step index) or "timestep" (the
            pipeline's timestep argument).
        output_caching: whether unselected tokens keep the previous step's final output (CAT) instead of
            their own (null: yes without a forecast, no with one).
    """

    name: ClassVar[str] = "cat_budget"
    handle: ClassVar[type] = CATHandle

    schedule_slope: float = 0.0
    schedule_block: int = 4
    forecast: float = 0.0
    forecast_max: float = 1.0
    forecast_time: str = "step"
    output_caching: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(is_num(self.schedule_slope) and -1.0 <= self.schedule_slope <= 1.0, self, "schedule_slope",
              "a float in [-1, 1]")
        check(is_int(self.schedule_block) and self.schedule_block >= 1, self, "schedule_block", "an integer >= 1")
        check(is_num(self.forecast) and 0.0 <= self.forecast <= 2.0, self, "forecast", "a float in [0, 2]")
        check(is_num(self.forecast_max) and self.forecast_max > 0.0, self, "forecast_max", "a float > 0")
        check(self.forecast_time in FORECAST_TIMES, self, "forecast_time", f"one of {', '.join(FORECAST_TIMES)}")
        check(self.output_caching in (None, True, False), self, "output_caching", "null, true or false")

    def timeline(self):
        return sys.modules[__name__]

    def caches_outputs(self) -> bool:
        """Whether unselected tokens keep the previous step's final output."""
        return self.forecast == 0 if self.output_caching is None else self.output_caching

    @classmethod
    def examples(cls, num_steps: int) -> tuple["CATBudgetConfig", "CATBudgetConfig"]:
        nothing, fast = super().examples(num_steps)
        return nothing, dataclasses.replace(fast, schedule_slope=0.5, schedule_block=2, forecast=1.0)

    def key_ignores(self) -> tuple[str, ...]:
        ignored = super().key_ignores()
        if self.schedule_slope == 0:
            ignored += ("schedule_block",)
        if self.forecast == 0:
            ignored += ("forecast_max", "forecast_time")
        return ignored

    def budgets(self, num_steps: int, num_tokens: int) -> tuple[int, ...]:
        """Image tokens recomputed per sample at each step (all of them outside the pruned steps)."""
        return _budgets(self, int(num_steps), int(num_tokens))

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        if not self.prunes(num_tokens) or num_steps <= self.warmup_steps:
            return [num_tokens] * num_steps
        return list(self.budgets(num_steps, num_tokens))

    def at_budget(self, budget: int, num_tokens: int) -> "CATBudgetConfig":
        """This config with a flat budget of `budget` tokens (what one step's selection runs with)."""
        return _at_budget(self, int(budget), int(num_tokens))


@functools.lru_cache(maxsize=256)
def _budgets(config: CATBudgetConfig, num_steps: int, num_tokens: int) -> tuple[int, ...]:
    pruned = [s for s in range(num_steps) if plain.phase_of(s, config) == "pruned"]
    per_pruned = schedule(len(pruned), config.num_kept(num_tokens), num_tokens, config.schedule_slope,
                          config.schedule_block)
    out = [num_tokens] * num_steps
    for s, k in zip(pruned, per_pruned):
        out[s] = k
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _at_budget(config: CATBudgetConfig, budget: int, num_tokens: int) -> CATBudgetConfig:
    if budget == config.num_kept(num_tokens):
        return config
    level = dataclasses.replace(config, keep_ratio=budget / num_tokens)
    assert level.num_kept(num_tokens) == budget
    return level


def schedule(num_pruned: int, budget: int, num_tokens: int, slope: float, block: int) -> list[int]:
    """Per-step budgets of `num_pruned` pruned steps: a line from budget x (1 + slope) to budget x
    (1 - slope), averaged over blocks of `block` steps, in [1, N - 1] (N when `budget` is N), with
    sum = num_pruned x budget exactly. slope 0 (or one step) is the flat schedule."""
    if slope == 0 or num_pruned <= 1:
        return [budget] * num_pruned
    lo, hi = 1, max(1, num_tokens - 1) if budget < num_tokens else num_tokens
    total = num_pruned * budget
    groups = [(a, min(a + block, num_pruned)) for a in range(0, num_pruned, block)]
    sizes = [b - a for a, b in groups]
    line = [budget * (1.0 + slope * (1.0 - 2.0 * j / (num_pruned - 1))) for j in range(num_pruned)]
    target = _clip_keeping_total([sum(line[a:b]) / (b - a) for a, b in groups], sizes, total, lo, hi)
    per_step, done, wanted = [], 0, 0.0
    for value, size in zip(target, sizes):  # round each block, carrying what rounding left over
        wanted += value * size
        k = min(hi, max(lo, round((wanted - done) / size)))
        per_step += [k] * size
        done += k * size
    rest = total - done  # |rest| <= half the last block: one token more or less on that many steps
    last = groups[-1][0]
    order = list(range(last, num_pruned)) if rest > 0 else list(range(num_pruned - 1, last - 1, -1))
    order += [j for j in range(num_pruned - 1, -1, -1) if j not in order]
    while rest:
        moved = False
        for j in order:
            step = 1 if rest > 0 else -1
            if rest and lo <= per_step[j] + step <= hi:
                per_step[j] += step
                rest -= step
                moved = True
        if not moved:
            raise ValueError(f"no schedule of {num_pruned} steps in [{lo}, {hi}] sums to {total}")
    return per_step


def _clip_keeping_total(values: list[float], sizes: list[int], total: float, lo: float, hi: float) -> list[float]:
    """`values` clipped into [lo, hi], what the clipped ones lose or gain spread evenly over the others."""
    values = list(values)
    for _ in range(len(values) + 1):
        clipped = [min(hi, max(lo, v)) for v in values]
        excess = total - sum(v * s for v, s in zip(clipped, sizes))
        free = [i for i, v in enumerate(clipped) if (excess > 0 and v < hi) or (excess < 0 and v > lo)]
        if abs(excess) < 1e-9 or not free:
            return clipped
        share = excess / sum(sizes[i] for i in free)
        values = [v + share if i in free else v for i, v in enumerate(clipped)]
    return [min(hi, max(lo, v)) for v in values]


def begin_step(state: GenerationState, config: CATBudgetConfig, grid: tuple[int, int]) -> None:
    """CAT's step; when forecasting, also fills the caches at step t0-2 and sets this step's rho."""
    plain.begin_step(state, config, grid)
    state.forecast = None
    n = grid[0] * grid[1]
    if config.forecast == 0 or not plain._pruning(state, config, n):
        return
    t0 = config.warmup_steps
    if state.step == t0 - 2:
        state.record = True  # the token's first of two computations before pruning starts
        state.extra["warm"] = [_time(state, config)]
    elif state.step == t0 - 1:
        for cache in state.caches.values():  # this step refills `out`: the older output moves to `prev`
            if cache.out is not None:
                keep(cache, "prev", cache.out, copy=True)
        state.extra["warm"].append(_time(state, config))
    elif state.plan is not None and state.plan.shape[1] > 0:
        state.forecast = coefficients(state, config, n)


def end_step(state: GenerationState, config: CATBudgetConfig, out: torch.Tensor) -> torch.Tensor:
    """CAT's output caching and selection, selecting at the next step's budget; without output caching,
    the unselected tokens' own outputs.  [B, N, D] -> [B, N, D]"""
    n = out.shape[1]
    phase = plain.phase_of(state.step, config)
    pruning = plain._pruning(state, config, n)
    level = config
    if pruning and config.schedule_slope != 0 and phase in ("cluster", "pruned"):
        budgets = _generation_budgets(state, config, n)
        k = budgets[min(state.step + 1, len(budgets) - 1)]
        level = config.at_budget(k, n)
        if phase == "pruned":
            state.quotas = state.extra["quotas"][k]
    kept = plain.end_step(state, level, out)
    if pruning and phase == "cluster" and config.schedule_slope != 0:
        levels = sorted(set(_generation_budgets(state, config, n)[config.warmup_steps:]))
        state.extra["quotas"] = {k: plain.quotas(config.at_budget(k, n), n, out.device) for k in levels}
    if pruning and phase == "pruned" and not config.caches_outputs():
        return out
    return kept


def _generation_budgets(state: GenerationState, config: CATBudgetConfig, n: int) -> tuple[int, ...]:
    if state.num_steps is None:
        raise ValueError(f"{type(config).__name__}.schedule_slope={config.schedule_slope!r} needs the number "
                         "of steps: call the pipeline, or handle.reset(num_steps=...) for a bare transformer")
    return config.budgets(state.num_steps, n)


def coefficients(state: GenerationState, config: CATBudgetConfig, n: int) -> torch.Tensor:
    """rho of this pruned step for every token ([B, N, 1], a buffer of the generation, updated in place),
    zero at the plan; then the planned tokens' times move on (their newest time becomes the older one,
    this step's the newest)."""
    active, plan = state.active, state.plan  # [P, K], [B, K]
    p, k = active.shape
    extra = state.extra
    if "times" not in extra:  # the first pruned step: every token was computed at t0-2 and t0-1
        extra["tau"] = torch.zeros(1, dtype=torch.float32, device=active.device)
        extra["times"] = times = torch.empty(2, p, n, dtype=torch.float32, device=active.device)
        older, newer = extra.pop("warm")
        _put(times[0], newer)
        _put(times[1], older)
        if not fits(state.buffers.rho, (plan.shape[0], n, 1), torch.float32, active.device):
            state.buffers.rho = static(torch.empty(plan.shape[0], n, 1, dtype=torch.float32, device=active.device))
    tau, times, rho = extra["tau"], extra["times"], state.buffers.rho
    _put(tau, _time(state, config))
    last, prev = times[0], times[1]  # [P, N]
    ratio = (tau - last) / (last - prev)  # a repeated time (a bare transformer's constant timestep): 0
    ratio = ratio.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).clamp_(0.0, config.forecast_max)
    ratio.mul_(config.forecast)
    ratio.scatter_(1, active, 0.0)  # recomputed tokens are exact
    rho.view(plan.shape[0] // p, p, n).copy_(ratio)  # [uncond, cond] halves share one selection
    prev.scatter_(1, active, last.gather(1, active))
    last.scatter_(1, active, tau.expand(p, k))
    return rho


def _time(state: GenerationState, config: CATBudgetConfig):
    """This step's time: the step index (a number) or the call's timestep (a one-element tensor)."""
    if config.forecast_time == "step":
        return float(state.step)
    t = state.timestep
    if t is None:
        raise ValueError(f"{type(config).__name__}.forecast_time='timestep' needs the transformer's `timestep` "
                         "passed by keyword (as diffusers pipelines do)")
    if isinstance(t, torch.Tensor):
        return t.detach().reshape(-1)[:1].float().clone()
    return float(t)


def _put(target: torch.Tensor, value) -> None:
    if isinstance(value, torch.Tensor):
        target.copy_(value)
    else:
        target.fill_(value)
