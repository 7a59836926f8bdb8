"""FORA: static caching of every block's attention and feed-forward outputs.

Selvaraju et al. 2024, "FORA: Fast-Forward Caching in Diffusion Transformer Acceleration",
arXiv 2407.01425 (code: github.com/prathebaselva/FORA, `src/models.py`, `DiTBlock.forward`,
mode `boost_infer_static`).

Every `interval` steps the attention and feed-forward modules of every block run and their outputs
are cached; at the steps in between the modules are not called at all and the cached outputs are
returned. What is cached is each module's own output, before the block's AdaLN gate and residual
add: the authors' block stores the attention and MLP results and then adds them, gated, to the
residual stream, also on reuse steps. So the gates and residuals still follow the current step's
conditioning.

Schedule (authors' code): the sampling loop counts its step index t down from T-1 to 0 and computes
when `t == T-1 or t % interval == 0`. In the 0-based order the pipeline runs (k = T-1-t) that is
step 0 plus every step k with `(T-1-k) % interval == 0`, which always includes the last step.
For 250 steps and interval 3 this is k % 3 == 0; for 8 steps it is k = 0, 1, 4, 7. The step count
T is read from the pipeline's scheduler; for a bare transformer give it with
`handle.reset(num_steps=T)`, or the schedule falls back to `k % interval == 0`.

Modules per family:
    SD3 / SD3.5 (`JointTransformerBlock`): `attn` (joint attention, returns the image and text
        outputs), `attn2` (SD3.5 dual-attention blocks), `ff`, `ff_context`.
    PixArt (`BasicTransformerBlock`): `attn1` (self-attention), `attn2` (cross-attention), `ff`.

The hooks sit on the modules themselves (hook name "fora"): on a reuse step nothing inside the module
runs, including its attention processor. `cat.apply` refuses FORA on a transformer that already carries
a method (methods do not stack).

This module also holds the plumbing FORA shares with ToCa (`cat/methods/toca.py`): the step clock on
the transformer and its per-generation reset (hooks attach and detach with `cat.adapters.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.hooks import ModelHook

from ..adapters.base import attach_hook, observe_encode_prompt
from ..adapters.sd3 import patchified_grid
from .base import MethodConfig, MethodHandle, check, is_int, register

HOOK_NAME = "fora"

# Transformer class -> (block list attribute, module names in each block). Modules absent from a
# block (SD3's `attn2` outside dual-attention blocks, the last SD3 block's `ff_context`) are skipped.
FAMILY_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "SD3Transformer2DModel": ("transformer_blocks", ("attn", "attn2", "ff", "ff_context")),
    "PixArtTransformer2DModel": ("transformer_blocks", ("attn1", "attn2", "ff")),
}


# ---------------------------------------------------------------------------------------------------
# Shared plumbing (also used by ToCa)
# ---------------------------------------------------------------------------------------------------


def family_of(transformer: torch.nn.Module, method: str) -> str:
    """The supported transformer class `transformer` is (or derives from); raises TypeError otherwise."""
    for cls in type(transformer).__mro__:
        if cls.__name__ in FAMILY_MODULES:
            return cls.__name__
    raise TypeError(
        f"{method} does not support {type(transformer).__name__}; supported transformer classes: "
        f"{', '.join(sorted(FAMILY_MODULES))}."
    )


def block_modules(transformer: torch.nn.Module, method: str) -> list[tuple[str, int, str, torch.nn.Module]]:
    """[(qualified name, block index, attribute name, module)] of the cached modules, block by block."""
    blocks_attr, names = FAMILY_MODULES[family_of(transformer, method)]
    found = []
    for i, block in enumerate(getattr(transformer, blocks_attr)):
        if getattr(block, "_chunk_size", None) is not None:
            raise ValueError(
                f"{method} cannot cache {blocks_attr}.{i}.ff with feed-forward chunking enabled (the module is "
                "then called once per chunk); call transformer.disable_forward_chunking() first."
            )
        for name in names:
            module = getattr(block, name, None)
            if module is not None:
                found.append((f"{blocks_attr}.{i}.{name}", i, name, module))
    return found


class StepClock:
    """Per-generation step state shared by one handle's hooks. Subclasses plan each step in `_plan`.

    `step` is the 0-based index of the current transformer call of the generation (one per
    denoising step: SD3 and PixArt batch both CFG halves into one call). `bypass` is set during a
    call the method must leave alone (SD3.5 skip-layer guidance's extra call).
    """

    keep_cache = True  # whether ReuseHook stores module outputs (a method that changes nothing need not)

    def __init__(self, config):
        self.config = config
        self.num_steps_hint: int | None = None  # given by the user for a bare transformer
        self.new_generation(False)

    def new_generation(self, cfg_pairs: bool) -> None:
        self.cfg_pairs = cfg_pairs
        self.step = -1
        self.num_steps: int | None = self.num_steps_hint
        self.grid: tuple[int, int] | None = None
        self.last_timestep: float | None = None
        self.bypass = False
        self.cache: dict[str, Any] = {}
        self._on_new_generation()

    def _on_new_generation(self) -> None:
        pass

    def begin_step(self, transformer, scheduler, args, kwargs) -> None:
        self.step += 1
        if self.step == 0:
            self.grid = patchified_grid(transformer, args, kwargs)
            if scheduler is not None and getattr(scheduler, "timesteps", None) is not None:
                self.num_steps = len(scheduler.timesteps)
        self._plan()

    def _plan(self) -> None:
        raise NotImplementedError

    def observe_timestep(self, timestep) -> None:
        """Bare-transformer use: a timestep above the previous one starts a new generation."""
        if not isinstance(timestep, torch.Tensor) or timestep.device.type == "meta":
            return
        t = float(timestep.flatten()[0])
        if self.last_timestep is not None and t > self.last_timestep:
            self.new_generation(self.cfg_pairs)
        self.last_timestep = t


class ClockHook(ModelHook):
    """On the transformer: advances the clock before each call (SD3.5's skip-layer call runs untouched)."""

    def __init__(self, clock: StepClock, scheduler=None):
        super().__init__()
        self.clock = clock
        self.scheduler = scheduler

    def pre_forward(self, module, *args, **kwargs):
        clock = self.clock
        if kwargs.get("skip_layers"):
            # SD3.5 skip-layer guidance adds a call on part of the batch with some blocks skipped: run it
            # in full, outside the schedule, leaving the step counter and the caches alone.
            clock.bypass = True
            return args, kwargs
        if self.scheduler is None:
            clock.observe_timestep(kwargs.get("timestep"))
        clock.begin_step(module, self.scheduler, args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        self.clock.bypass = False
        return output


class CachingHandle(MethodHandle):
    """Shared install/remove of a caching method: module hooks + the clock hook + the prompt observer."""

    hook_name: ClassVar[str] = ""
    method_name: ClassVar[str] = ""

    def __init__(self, target, config):
        super().__init__(target, config)
        self._clock = self._make_clock()

    def _make_clock(self) -> StepClock:
        raise NotImplementedError

    def _module_hook(self, name: str, layer: int, attr: str, module: torch.nn.Module) -> ModelHook:
        raise NotImplementedError

    def reset(self, num_steps: int | None = None, cfg_pairs: bool | None = None) -> None:
        """Starts a new generation. Pipelines do this by themselves. For a bare transformer, give the
        number of denoising steps (kept for later generations) and whether the batch holds
        [uncond..., cond...] CFG pairs."""
        if num_steps is not None:
            if not (is_int(num_steps) and num_steps >= 1):
                raise ValueError(f"num_steps={num_steps!r} is invalid: num_steps must be an integer >= 1.")
            self._clock.num_steps_hint = num_steps
        self._clock.new_generation(self._clock.cfg_pairs if cfg_pairs is None else cfg_pairs)

    def remove(self) -> None:
        super().remove()
        self._clock.new_generation(False)  # drop the caches

    def _install(self) -> None:
        transformer = self.transformer
        modules = block_modules(transformer, self.method_name)
        for name, layer, attr, module in modules:
            attach_hook(module, self._module_hook(name, layer, attr, module), self._undo, self.hook_name)
        scheduler = getattr(self._pipe, "scheduler", None)
        attach_hook(transformer, ClockHook(self._clock, scheduler), self._undo, self.hook_name)
        if self._pipe is not None:
            observe_encode_prompt(self._pipe, self._clock.new_generation, self._undo)


# ---------------------------------------------------------------------------------------------------
# FORA
# ---------------------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class FORAConfig(MethodConfig):
    """FORA (Selvaraju et al. 2024, arXiv 2407.01425).

    Attributes:
        interval: the cache is refreshed every `interval` steps (the authors' `--cache-threshold`,
            3 in their README's sampling commands). 1 computes every step (the full model, bit-exact).
    """

    name: ClassVar[str] = "fora"
    interval: int = 3

    def __post_init__(self) -> None:
        check(is_int(self.interval) and self.interval >= 1, self, "interval", "an integer >= 1")


def fora_computes(step: int, num_steps: int | None, interval: int) -> bool:
    """Whether FORA runs the modules at 0-based step `step` of `num_steps` (see the module docstring)."""
    if step == 0:
        return True
    if num_steps is None:
        return step % interval == 0
    return (num_steps - 1 - step) % interval == 0


@dataclass(frozen=True)
class FORAStats:
    """Which steps of the current or last generation ran the modules and which reused their cache."""

    computed_steps: tuple[int, ...]
    reused_steps: tuple[int, ...]

    @property
    def num_steps(self) -> int:
        return len(self.computed_steps) + len(self.reused_steps)

    @property
    def num_computed(self) -> int:
        return len(self.computed_steps)

    @property
    def num_reused(self) -> int:
        return len(self.reused_steps)


class _FORAClock(StepClock):
    def _on_new_generation(self) -> None:
        self.compute = True
        self.computed: list[int] = []
        self.reused: list[int] = []

    def _plan(self) -> None:
        self.compute = fora_computes(self.step, self.num_steps, self.config.interval)
        (self.computed if self.compute else self.reused).append(self.step)

    @property
    def recompute(self) -> bool:
        return self.compute


class ReuseHook(ModelHook):
    """A module whose whole output is reused: it runs (and its output is cached) on the steps where the
    clock's `recompute` is set; on the others the cached output is returned without running it. Used by
    FORA for every module and by ToCa for self-attention."""

    def __init__(self, clock: StepClock, name: str):
        super().__init__()
        self.clock = clock
        self.name = name

    def new_forward(self, module, *args, **kwargs):
        clock = self.clock
        forward = self.fn_ref.original_forward
        if clock.bypass or clock.step < 0:
            return forward(*args, **kwargs)
        if not clock.recompute and self.name in clock.cache:
            return clock.cache[self.name]
        out = forward(*args, **kwargs)
        if clock.keep_cache:
            clock.cache[self.name] = out
        return out


class FORAHandle(CachingHandle):
    hook_name = HOOK_NAME
    method_name = "FORA"

    def _make_clock(self) -> StepClock:
        return _FORAClock(self.config)

    def _module_hook(self, name, layer, attr, module) -> ModelHook:
        return ReuseHook(self._clock, name)

    @property
    def stats(self) -> FORAStats:
        """Computed and reused steps of the current or last generation."""
        return FORAStats(tuple(self._clock.computed), tuple(self._clock.reused))


FORAConfig.handle = FORAHandle
