"""HiCache: Feng et al., "HiCache: A Plug-in Scaled-Hermite Upgrade for Taylor-Style Cache-then-Forecast
Diffusion Acceleration", ICLR 2026, arXiv 2508.16984 (code: github.com/yiming-l21/CFGCache, the HiCache
repository).

TaylorSeer's cache-then-forecast with another basis. Every cached module's output is computed on full steps
and its finite-difference factors F_0 .. F_m refreshed (TaylorSeer's recursion); on the steps in between it
is forecast x steps after the last full step as

    y(x) = F_0 + sum_{i=1..m} F_i s^i H_i(s x) / i!,

H_i the physicists' Hermite polynomials, s the scale ("dual scaling": s inside the polynomial and s^i
outside). Their `taylor_utils/__init__.py` `_hicache_prediction_formula`; the math is `cat.core.forecast`
(with how it relates to the Taylor forecast), the schedule and hooks `cat/engine/forecast_cache.py`.

Why HiCache rather than FoCa (forecast-then-calibrate, arXiv 2508.16211) as this project's forecasting
successor of TaylorSeer: HiCache's code is public and read here (the FLUX backend, whose `cal_type`,
`cache_init` and derivative update are TaylorSeer's); FoCa's is in no repository we could find (cache-dit
ships a FoCa calibrator stub that raises NotImplementedError; the paper, v1, says its code comes upon
acceptance). It is a method of its own rather than a
TaylorSeer option because this project's TaylorSeer is diffusers' hook, whose schedule and factor updates
differ from the authors' (see `TaylorSeerConfig`); HiCache follows the authors' code, TaylorSeer's
schedule included, so `HiCacheConfig(scale=1/sqrt(2), max_order=1)` is the authors' first-order TaylorSeer.

Modules (the family's `STEP_CACHED` ones, as their FLUX code forecasts img_attn, img_mlp, txt_attn, txt_mlp):
SD3 / SD3.5 `attn` (its image and text outputs, each with its own factors), `attn2`, `ff`, `ff_context`;
PixArt `attn1`, `attn2`, `ff`. On a forecast step none of them runs. FLUX is refused (no `STEP_CACHED`
modules: their single-stream blocks forecast the whole block output, which this family mapping lacks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..core.forecast import hermite_weights
from ..engine.forecast_cache import ForecastHandle, ForecastState, full_steps
from ..engine.module_cache import StepState
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register

HOOK_NAME = "hicache"


@register
@dataclass(frozen=True)
class HiCacheConfig(MethodConfig):
    """HiCache. Defaults: the authors' FLUX setting (below). `interval=1` computes every step: bit-exact;
    `max_order=0` reuses the last full output (FORA on TaylorSeer's schedule).

    The authors' setting per architecture, `HiCacheConfig.authors(family, num_steps)` (yiming-l21/CFGCache
    @bf339cb). Their README runs FLUX through `RUN/multi_gpu_launcher.sh --mode HiCache`, whose defaults
    are passed to `models/flux/src/sample.py` and override `cache_init`; its 5.55x speedup at 50 steps is
    that schedule's (full steps 0, 1, 2, 9, 16, ..., 44: 9 of 50). They have no DiT or PixArt code (FLUX,
    Qwen-Image and Chipmunk-FLUX only), so PixArt gets the same setting. Nothing depends on the step count.

    | field | MMDiT (SD3, FLUX) and PixArt | source (CFGCache @bf339cb) |
    |---|---|---|
    | interval | 7 | `RUN/multi_gpu_launcher.sh` (`INTERVAL="7"`, passed as `--interval`); `models/flux/src/flux/modules/cache_functions/cache_init.py` `cache_init` (`interval` overrides `fresh_threshold`); `cal_type.py` `cal_type` (counter) |
    | max_order | 2 | the launcher (`MAX_ORDER="2"`, `--max_order`) |
    | scale | 0.5 | the launcher (`HICACHE_SCALE_FACTOR="0.5"`, `--hicache_scale`); `cache_init` mode 'HiCache' (`hicache_scale_factor = 0.5`); `flux/taylor_utils/__init__.py` `_hicache_prediction_formula` |
    | warmup_steps | 3, fixed at any T | the launcher (`FIRST_ENHANCE="3"`); `cal_type` (`step < first_enhance`); `derivative_approximation` (differences from step first_enhance - 1) |

    Without the launcher, `cache_init`'s own 'HiCache' branch sets interval 6 and order 1 (same scale and
    warm-up); their Qwen-Image `sample.py` defaults to interval 7, order 3.

    Where ours deviates: the Hermite weights are computed in double precision on the host (theirs evaluate
    H_i on a scalar tensor of the feature dtype), which only matters for bfloat16/float16 features.

    Attributes:
        interval: a full step every `interval` steps after the warm-up (N in the paper, their
            `fresh_threshold`); 1 computes every step.
        max_order: the highest finite-difference order forecast (their `max_order`); 0 reuses F_0.
        scale: s, the Hermite scale (their `hicache_scale_factor`); 1/sqrt(2) gives the Taylor forecast at
            first order.
        warmup_steps: leading full steps (their `first_enhance`).
    """

    name: ClassVar[str] = "hicache"
    interval: int = 7
    max_order: int = 2
    scale: float = 0.5
    warmup_steps: int = 3

    def __post_init__(self) -> None:
        check(is_int(self.interval) and self.interval >= 1, self, "interval", "an integer >= 1")
        check(is_int(self.max_order) and 0 <= self.max_order <= 4, self, "max_order", "an integer in [0, 4]")
        check(is_num(self.scale) and math.isfinite(self.scale) and self.scale > 0, self, "scale",
              "a finite number > 0")
        check_warmup(self)

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    def key_ignores(self) -> tuple[str, ...]:
        """The scale when nothing is forecast beyond F_0."""
        return ("scale",) if self.max_order == 0 or self.is_identity else ()

    @property
    def is_identity(self) -> bool:
        return self.interval == 1

    def forecast_weights(self, x: int) -> list[float]:
        """The factors' weights x steps after the last full step (`cat.core.forecast.hermite_weights`)."""
        return hermite_weights(x, self.max_order, self.scale)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """The authors' FLUX setting, for every class (see the class docstring)."""
        architecture(cls, family, num_steps)
        return {"interval": 7, "max_order": 2, "scale": 0.5, "warmup_steps": 3}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["HiCacheConfig", "HiCacheConfig"]:
        return cls(interval=1), cls()

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """All tokens on full steps, none on forecast steps."""
        full = set(full_steps(num_steps, 1 if self.is_identity else self.interval, self.warmup_steps))
        return [num_tokens if s in full else 0 for s in range(num_steps)]


class HiCacheHandle(ForecastHandle):
    hook_name = HOOK_NAME

    def _make_state(self) -> StepState:
        return ForecastState(self.config, self.clock, self.family)


HiCacheConfig.handle = HiCacheHandle
