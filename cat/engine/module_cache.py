"""What FORA and ToCa share: per-step state on the transformer, and hooks on the cached modules.

The modules are the family's `STEP_CACHED` ones (`cat/families/`). A `StepHook` on the transformer
advances the step before each call and lets the method plan it (`StepState._plan`); each cached module
carries a hook of the method's own (`ReuseHook`: its whole output is reused on the steps the plan says).
Hooks attach and detach with exact inverses (`cat/engine/patching.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers.hooks import ModelHook

from ..families import STEP_CACHED, family_for
from ..families.base import block_index, check_no_chunking
from .clock import GenerationClock, outside_schedule
from .handle import MethodHandle
from .patching import attach_hook
from .stats import tensor_bytes


class StepState:
    """Per-generation step state shared by one handle's hooks. Methods plan each step in `_plan`.

    `step` is the 0-based index of the current transformer call of the generation (one per denoising
    step: SD3 and PixArt batch both CFG halves into one call). `bypass` is set during a call outside the
    schedule (SD3.5 skip-layer guidance's extra call), which every module runs in full.
    """

    keep_cache = True  # whether ReuseHook stores module outputs (a method that changes nothing need not)

    def __init__(self, config, clock: GenerationClock, family):
        self.config = config
        self.clock = clock
        self.family = family
        self.new_generation()

    def new_generation(self) -> None:
        self.step = -1
        self.num_steps: int | None = None
        self.grid: tuple[int, int] | None = None
        self.bypass = False
        self.cache: dict[str, Any] = {}
        self._on_new_generation()

    def _on_new_generation(self) -> None:
        pass

    def begin_step(self, transformer, scheduler, args, kwargs) -> None:
        self.step += 1
        if self.step == 0:
            self.grid = self.family.grid(transformer, args, kwargs)
            self.num_steps = self.clock.num_steps(scheduler)
        self._plan()

    def _plan(self) -> None:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int | None:
        return self.grid[0] * self.grid[1] if self.grid else None


class StepHook(ModelHook):
    """On the transformer: advances the step before each call (a call outside the schedule runs untouched)."""

    def __init__(self, state: StepState, scheduler=None):
        super().__init__()
        self.state = state
        self.scheduler = scheduler

    def pre_forward(self, module, *args, **kwargs):
        state = self.state
        if outside_schedule(kwargs):
            state.bypass = True
            return args, kwargs
        state.clock.observe_call(module, args, kwargs)
        state.begin_step(module, self.scheduler, args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        self.state.bypass = False
        return output


class ReuseHook(ModelHook):
    """A module whose whole output is reused: it runs (and its output is cached) on the steps where the
    state's `recompute` is set; on the others the cached output is returned without running it. Used by
    FORA for every module and by ToCa for self-attention."""

    def __init__(self, state: StepState, name: str):
        super().__init__()
        self.state = state
        self.name = name

    def new_forward(self, module, *args, **kwargs):
        state = self.state
        forward = self.fn_ref.original_forward
        if state.bypass or state.step < 0:
            return forward(*args, **kwargs)
        if not state.recompute and self.name in state.cache:
            return state.cache[self.name]
        out = forward(*args, **kwargs)
        if state.keep_cache:
            state.cache[self.name] = out
        return out


class ModuleCacheHandle(MethodHandle):
    """Install and remove of a method that hooks the cached modules and the transformer."""

    hook_name: ClassVar[str] = ""

    def __init__(self, target, config):
        super().__init__(target, config)
        self.label = type(config).__name__.removesuffix("Config")  # names the method in messages
        self.family = family_for(self.transformer, self.label, STEP_CACHED)
        self.state = self._make_state()

    def _make_state(self) -> StepState:
        raise NotImplementedError

    def _module_hook(self, name: str, layer: int, attr: str, module: torch.nn.Module) -> ModelHook:
        raise NotImplementedError

    def cache_bytes(self) -> int:
        return tensor_bytes(self.state.cache)

    def _new_generation(self) -> None:
        if hasattr(self, "state"):
            self.state.new_generation()

    def _install(self) -> None:
        transformer = self.transformer
        check_no_chunking(transformer, self.label)
        for name, module in self.family.find(transformer, STEP_CACHED):
            hook = self._module_hook(name, block_index(name), name.rsplit(".", 1)[1], module)
            attach_hook(module, hook, self._undo, self.hook_name)
        attach_hook(transformer, StepHook(self.state, getattr(self._pipe, "scheduler", None)), self._undo, self.hook_name)
        self.clock.observe_pipeline(self._undo)
