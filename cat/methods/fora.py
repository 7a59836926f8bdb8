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
`handle.reset(num_steps=T)`, or the schedule falls back to `k % interval == 0`. `warmup_steps`
(default 1: step 0, the authors' only leading full step) computes steps 0 .. warmup_steps-1 as well.

The modules are the family's `STEP_CACHED` ones (`cat/families/`): SD3 / SD3.5's `attn` (joint
attention, returns the image and text outputs), `attn2` (SD3.5 dual-attention blocks), `ff`,
`ff_context`; PixArt's `attn1`, `attn2`, `ff`. The hooks sit on the modules themselves (hook name
"fora"): on a reuse step nothing inside the module runs, including its attention processor. The
plumbing FORA shares with ToCa is `cat/engine/module_cache.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diffusers.hooks import ModelHook

from ..engine.module_cache import ModuleCacheHandle, ReuseHook, StepState
from ..engine.stats import MethodStats, StepRecord
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, register

HOOK_NAME = "fora"


@register
@dataclass(frozen=True)
class FORAConfig(MethodConfig):
    """FORA (Selvaraju et al. 2024, arXiv 2407.01425).

    The authors' setting, `FORAConfig.authors(family, num_steps)`: FORA's only code is for DiT
    (prathebaselva/FORA @acde628), and its schedule does not depend on the architecture, so it is the
    authors' setting for both classes (PixArt's block is DiT's plus cross-attention; MMDiT has no FORA code).

    | field | MMDiT (SD3, FLUX) and PixArt | source (FORA @acde628) |
    |---|---|---|
    | interval | 3 | README.md sampling commands `--cache-threshold 3` |
    | warmup_steps | 1 (step 0; the countdown rule does the rest, at any step count) | src/models.py `DiTBlock.forward`: computes iff `step == numstep-1 or step % cache_threshold == 0`, the step counted down (src/diffusion/gaussian_diffusion.py `p_sample_loop_progressive`) |

    Ours follows it exactly (`fora_computes`); the cached modules are the family's attention and
    feed-forward modules, the natural extension of DiT's attn and mlp.

    Attributes:
        interval: the cache is refreshed every `interval` steps (the authors' `--cache-threshold`,
            3 in their README's sampling commands). 1 computes every step (the full model, bit-exact).
        warmup_steps: leading steps computed in full (1: step 0 only, as the authors' schedule); the
            countdown schedule applies after them.
    """

    name: ClassVar[str] = "fora"
    interval: int = 3
    warmup_steps: int = 1

    def __post_init__(self) -> None:
        check(is_int(self.interval) and self.interval >= 1, self, "interval", "an integer >= 1")
        check_warmup(self)

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """The authors' DiT setting for every family (see the class docstring): interval 3, step 0 full."""
        architecture(cls, family, num_steps)
        return {"interval": 3, "warmup_steps": 1}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["FORAConfig", "FORAConfig"]:
        return cls(interval=1), cls()

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """All tokens on the steps that run the modules, none on the ones that reuse their outputs."""
        return [num_tokens if fora_computes(s, num_steps, self.interval, self.warmup_steps) else 0
                for s in range(num_steps)]


def fora_computes(step: int, num_steps: int | None, interval: int, warmup_steps: int = 1) -> bool:
    """Whether FORA runs the modules at 0-based step `step` of `num_steps` (see the module docstring)."""
    if step < warmup_steps:
        return True
    if num_steps is None:
        return step % interval == 0
    return (num_steps - 1 - step) % interval == 0


@dataclass
class FORAStats(MethodStats):
    """Which steps of the current or last generation ran the modules ("full") and which reused their
    cache ("reuse")."""

    @property
    def computed_steps(self) -> tuple[int, ...]:
        return self.steps_in("full")

    @property
    def reused_steps(self) -> tuple[int, ...]:
        return self.steps_in("reuse")

    @property
    def num_computed(self) -> int:
        return len(self.computed_steps)

    @property
    def num_reused(self) -> int:
        return len(self.reused_steps)


class _FORAState(StepState):
    def _on_new_generation(self) -> None:
        self.compute = True
        self.records: list[StepRecord] = []

    def _plan(self) -> None:
        self.compute = fora_computes(self.step, self.num_steps, self.config.interval, self.config.warmup_steps)
        self.records.append(StepRecord(self.step, "full" if self.compute else "reuse",
                                       self.num_tokens if self.compute else 0))

    @property
    def recompute(self) -> bool:
        return self.compute


class FORAHandle(ModuleCacheHandle):
    hook_name = HOOK_NAME

    def _make_state(self) -> StepState:
        return _FORAState(self.config, self.clock, self.family)

    def _module_hook(self, name, layer, attr, module) -> ModelHook:
        return ReuseHook(self.state, name)

    @property
    def stats(self) -> FORAStats:
        """Computed and reused steps of the current or last generation."""
        return FORAStats(steps=list(self.state.records))


FORAConfig.handle = FORAHandle
