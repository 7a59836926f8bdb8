"""TaylorSeer: Liu et al. 2025, "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers",
arXiv 2503.06923.

Attention and feed-forward outputs are computed fully every `cache_interval` steps and forecast in between
with a Taylor expansion in the step index (`diffusers.hooks.apply_taylorseer_cache`). diffusers' default
patterns (`^transformer_blocks.*attn`, ...) hook nothing on PixArt (`attn1`/`attn2`) and no feed-forward
anywhere; the authors forecast both the attention and the MLP outputs of every block, so the modules are
the family's FORECAST patterns (`cat/families/`). The shared plumbing (cache context, generation resets,
exact removal) is `cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..engine.diffusers_cache import DiffusersCacheHandle
from ..engine.stats import MethodStats, StepRecord
from ..families import FORECAST, family_for
from .base import MethodConfig, architecture, check, check_warmup_steps, is_int, register

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@register
@dataclass(frozen=True)
class TaylorSeerConfig(MethodConfig):
    """TaylorSeer. Defaults: a full step every 5, a 2nd-order forecast, 3 full warm-up steps (this project's
    first choice: diffusers' defaults with order 2; the authors' code has no such setting, see below).
    `cache_interval=1` (or a warm-up covering every step) computes everything: bit-exact. `warmup_steps` is
    diffusers' `disable_cache_before_step`.

    The authors' setting per architecture, `TaylorSeerConfig.authors(family, num_steps)` (Shenyi-Z/TaylorSeer
    @288776d; no SD3 and no PixArt code: MMDiT follows their FLUX code, PixArt their DiT code, the nearest: a
    PixArt block is DiT's block plus cross-attention, sampled as DiT is, where FLUX is a rectified-flow MMDiT).
    The warm-up is fixed in their code at any step count, and so are the interval and the order.

    | field | MMDiT (SD3, FLUX) | PixArt (DiT code) |
    |---|---|---|
    | cache_interval | 6: `TaylorSeer-FLUX/src/flux/modules/cache_functions/cache_init.py` `cache_init` (`fresh_threshold`) | 4: `TaylorSeer-DiT/sample.py` (`--interval` default) |
    | max_order | 1: same `cache_init` (`max_order`) | 4: `TaylorSeer-DiT/sample.py` (`--max-order` default) |
    | warmup_steps | 3: same `cache_init` (`first_enhance`); `cal_type.py` `cal_type` (`step < first_enhance`) | 2: `TaylorSeer-DiT/cache_functions/cache_init.py` `cache_init` (`first_enhance`); `cal_type.py` `cal_type` |
    | factors_dtype | None (the module's dtype, as theirs) | None |
    | disable_cache_after_step | None (none in their code) | None |

    Where ours still deviates: the refresh phase. Their `cal_type` counts from the last full step (full
    when `cache_counter == interval - 1`): at 28 steps FLUX's 0, 1, 2, 8, 14, 20, 26 and DiT's 0, 1, 5, 9,
    ..., 25. diffusers' hook computes when `(step - warmup_steps - 1) % cache_interval == 0`, the first
    refresh two steps after the warm-up: 0, 1, 2, 4, 10, 16, 22 and 0, 1, 3, 7, ..., 27 for the same
    settings (`taylorseer_cache.py` `_measure_should_compute`). And diffusers updates the Taylor factors at
    every warm-up step, where their `taylor_utils` `derivative_approximation` starts the first-order
    difference only at step first_enhance - 1.
    """

    name: ClassVar[str] = "taylorseer"
    cache_interval: int = 5
    max_order: int = 2
    warmup_steps: int = 3  # diffusers' `disable_cache_before_step`
    disable_cache_after_step: int | None = None
    factors_dtype: str | None = None  # None: keep each module's output dtype, as the authors do
    cache_modules: tuple[str, ...] | None = None  # regexes (re.fullmatch); None: the family's FORECAST modules

    def __post_init__(self):
        check(is_int(self.cache_interval) and self.cache_interval >= 1, self, "cache_interval", "an integer >= 1")
        check(is_int(self.max_order) and 0 <= self.max_order <= 4, self, "max_order", "an integer in [0, 4]")
        check(is_int(self.warmup_steps) and self.warmup_steps >= 1, self,
              "warmup_steps", "an integer >= 1 (the first step has nothing to forecast from)")
        after = self.disable_cache_after_step
        check(after is None or (is_int(after) and after >= self.warmup_steps), self,
              "disable_cache_after_step", "None or an integer >= warmup_steps")
        check(self.factors_dtype is None or self.factors_dtype in _DTYPES, self, "factors_dtype",
              f"None or one of {sorted(_DTYPES)}")
        modules = self.cache_modules
        if isinstance(modules, (list, tuple)):
            object.__setattr__(self, "cache_modules", modules := tuple(modules))
        check(modules is None or (len(modules) > 0 and all(isinstance(p, str) and _compiles(p) for p in modules)),
              self, "cache_modules", "None or a non-empty sequence of valid regular expressions")

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their FLUX setting on MMDiT, their DiT setting on PixArt (see the class docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            return {"cache_interval": 6, "max_order": 1, "warmup_steps": 3, "factors_dtype": None,
                    "disable_cache_after_step": None}
        return {"cache_interval": 4, "max_order": 4, "warmup_steps": 2, "factors_dtype": None,
                "disable_cache_after_step": None}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["TaylorSeerConfig", "TaylorSeerConfig"]:
        return cls(cache_interval=1), cls()

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@dataclass
class TaylorSeerStats(MethodStats):
    """Steps "full", "forecast" (every hooked module forecast) or "partial"; all transformer calls; hooked-module
    forward calls computed and forecast."""

    transformer_calls: int = 0
    modules_computed: int = 0
    modules_forecast: int = 0


class TaylorSeerHandle(DiffusersCacheHandle):
    """`diffusers.hooks.apply_taylorseer_cache` with the family's FORECAST module patterns."""

    def __init__(self, target, config):
        super().__init__(target, config)
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        self.hook_names = (_TAYLORSEER_CACHE_HOOK,)

    def _register_hooks(self) -> None:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        c = self.config
        try:
            patterns = c.cache_modules or family_for(self.transformer, "TaylorSeer", FORECAST).modules[FORECAST]
        except TypeError as err:
            raise TypeError(f"{err} Or give the modules to forecast: TaylorSeerConfig(cache_modules=[...]).") from None
        apply_taylorseer_cache(self.transformer, TaylorSeerCacheConfig(
            cache_interval=c.cache_interval, disable_cache_before_step=c.warmup_steps,
            disable_cache_after_step=c.disable_cache_after_step, max_order=c.max_order,
            taylor_factors_dtype=None if c.factors_dtype is None else _DTYPES[c.factors_dtype],
            cache_identifiers=list(patterns),
        ))
        for _, module in self.transformer.named_modules():  # count each hook's compute/forecast decision
            hook = getattr(vars(module).get("_diffusers_hook"), "hooks", {}).get(self.hook_names[0])
            if hook is not None:
                hook._measure_should_compute = self._counting(hook._measure_should_compute)

    def _counting(self, measure):
        def measure_should_compute():
            should_compute, state = measure()
            self._counts["modules_computed" if should_compute else "modules_forecast"] += 1
            return should_compute, state

        return measure_should_compute

    def _fresh_counts(self) -> dict:
        return {"modules_computed": 0, "modules_forecast": 0}

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        computed = self._counts["modules_computed"] - before["modules_computed"]
        forecast = self._counts["modules_forecast"] - before["modules_forecast"]
        if not forecast:
            return StepRecord(step, "full", tokens)
        return StepRecord(step, "forecast", 0) if not computed else StepRecord(step, "partial")

    @property
    def stats(self) -> "TaylorSeerStats":
        """Transformer calls and hooked-module forward calls computed or forecast (the current or last generation)."""
        return TaylorSeerStats(steps=list(self._steps), **self._counts)


TaylorSeerConfig.handle = TaylorSeerHandle
