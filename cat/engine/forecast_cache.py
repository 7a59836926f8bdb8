"""What the forecasting caches share (HiCache, ClusCa): the authors' step schedule and a forecast of every
cached module's output on the steps in between, from its factors (`cat.core.forecast`).

The schedule is the one of the TaylorSeer family's code (`cache_functions/cal_type.py` `cal_type` in
TaylorSeer, ClusCa and HiCache): steps 0 .. warmup_steps-1 are full, then a step is full `interval` steps
after the last full one. At a full step every cached module runs and its factors are refreshed from its
output (their `derivative_approximation`: differences start at step warmup_steps - 1, so the earlier warm-up
steps keep the output alone); at the other steps its output is the factors' forecast, `x` steps after the
last full step, weighed by the method (`config.forecast_weights(x)`: Taylor, scaled Hermite).

Built on `module_cache.py`: its `StepHook` advances the step and lets `ForecastState` plan it; a
`ForecastHook` sits on each cached module (the family's `STEP_CACHED` ones). A module that returns a tuple
(SD3's joint attention: image and text outputs) has factors per element. The factors of a module live in
`state.cache[name]` (one list per output element), for one generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import ModelHook

from ..core.forecast import update_factors, weigh
from .module_cache import ModuleCacheHandle, StepState
from .stats import MethodStats, StepRecord


def is_full(step: int, last_full: int | None, interval: int, warmup_steps: int) -> bool:
    """Whether 0-based step `step` is full, `last_full` the last full step before it (their `cal_type`: a counter
    reset at every full step, full again when it reaches interval - 1)."""
    return step < warmup_steps or last_full is None or step - last_full >= interval


def full_steps(num_steps: int, interval: int, warmup_steps: int) -> tuple[int, ...]:
    """The full steps of a `num_steps` schedule."""
    out: list[int] = []
    for step in range(num_steps):
        if is_full(step, out[-1] if out else None, interval, warmup_steps):
            out.append(step)
    return tuple(out)


@dataclass
class ForecastStats(MethodStats):
    """Steps "full" (every cached module ran) and the method's others ("forecast", "cluster") of the current or
    last generation."""

    @property
    def full_steps(self) -> tuple[int, ...]:
        return self.steps_in("full")

    @property
    def forecast_steps(self) -> tuple[int, ...]:
        return tuple(r.step for r in self.steps if r.phase != "full")


class ForecastState(StepState):
    """The schedule and the factors of one generation. A config has `interval`, `warmup_steps`, `max_order`,
    `is_identity` and `forecast_weights(x)`."""

    cached_phase = "forecast"  # the phase of the steps in between, as the records say

    @property
    def keep_cache(self) -> bool:
        return not self.config.is_identity

    def _on_new_generation(self) -> None:
        self.full = True
        self.last_full: int | None = None
        self.distance: int | None = None  # steps from the previous full step to the current one
        self.restart = True  # whether the current full step starts the factors again from its output
        self.weights: list[float] = [1.0]
        self.tuples: set[str] = set()  # modules whose output is a tuple
        self.records: list[StepRecord] = []

    def _plan(self) -> None:
        c, step = self.config, self.step
        self.full = c.is_identity or is_full(step, self.last_full, c.interval, c.warmup_steps)
        if self.full:
            self.distance = None if self.last_full is None else step - self.last_full
            self.restart = step < c.warmup_steps - 1
            self.last_full = step
        else:
            self.weights = c.forecast_weights(step - self.last_full)
        self.records.append(StepRecord(step, "full", self.num_tokens) if self.full else
                            StepRecord(step, self.cached_phase, self.cached_tokens))

    @property
    def cached_tokens(self) -> int:
        """Image tokens a module recomputes per sample on the steps in between."""
        return 0

    def refresh(self, name: str, output) -> None:
        """Refreshes the factors of module `name` from its output at this full step."""
        outputs = output if isinstance(output, tuple) else (output,)
        if isinstance(output, tuple):
            self.tuples.add(name)
        old = None if self.restart else self.cache.get(name)
        self.cache[name] = [None if y is None else
                            update_factors(None if old is None else old[i], y, self.distance, self.config.max_order)
                            for i, y in enumerate(outputs)]

    def forecast(self, name: str):
        """The forecast output of module `name` at this step (a tuple where the module returns one)."""
        outputs = tuple(None if f is None else weigh(f, self.weights) for f in self.cache[name])
        return outputs if name in self.tuples else outputs[0]


class ForecastHook(ModelHook):
    """A cached module: runs and refreshes its factors on full steps, returns their forecast on the others."""

    def __init__(self, state: ForecastState, name: str):
        super().__init__()
        self.state = state
        self.name = name

    def new_forward(self, module, *args, **kwargs):
        state = self.state
        forward = self.fn_ref.original_forward
        if state.bypass or state.step < 0:
            return forward(*args, **kwargs)
        if state.full or self.name not in state.cache:
            out = forward(*args, **kwargs)
            if state.keep_cache:
                state.refresh(self.name, out)
            return out
        return state.forecast(self.name)


class ForecastHandle(ModuleCacheHandle):
    """Install and remove of a forecasting cache: a `ForecastHook` on every cached module (methods may put
    another hook on some, `_module_hook`)."""

    def _module_hook(self, name: str, layer: int, attr: str, module: torch.nn.Module) -> ModelHook:
        return ForecastHook(self.state, name)

    @property
    def stats(self) -> ForecastStats:
        """Full and forecast steps of the current or last generation."""
        return ForecastStats(steps=list(self.state.records))
