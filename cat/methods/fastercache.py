"""FasterCache: Lv et al. 2024, "FasterCache: Training-Free Video Diffusion Model Acceleration with High
Quality", arXiv 2410.19355 (code: github.com/Vchitect/FasterCache), through diffusers' own `apply_faster_cache`
(`diffusers/hooks/faster_cache.py`).

Two reuses, both from step `warmup_steps` on:
- CFG-Cache: at most steps (all but every `uncond_interval`-th call, from `uncond_start` on) the transformer
  computes the conditional half of the [uncond, cond] batch only; the unconditional output is the conditional
  one plus the (uncond - cond) difference of the last full step, split into low and high frequencies (a centred
  disc of radius min(H, W) // 5 in the 2-D FFT of each channel), each scaled by 1.1 per skipped step while the
  step is at most `low_freq_end` (low) or at least `high_freq_start` (high).
- attention reuse: each self-attention runs at every `attention_interval`-th call; in between its output is
  extrapolated from its last two outputs, o_t + (o_t - o_{t-2}) w with w = `attention_weight`. With CFG, diffusers'
  hook does this only on calls that compute the conditional half alone (its cache holds conditional outputs).

diffusers' hooks compare a "timestep" from a callback with their ranges. The authors count steps (their
`counter`), so the callback gives the 0-based step index and every range here is in steps, scaled from the
authors' 50 steps to the run's step count. The CFG layout diffusers assumes, [uncond..., cond...] along the batch
(the conditional half is the second), is SD3's and PixArt's (both pipelines concatenate the negative embeddings
first); the transformer's inputs in that layout are named (`hidden_states`, `encoder_hidden_states`, `timestep`,
the masks, and SD3's `pooled_projections`), and PixArt's size conditions in `added_cond_kwargs`, which diffusers'
hook does not split, are cut to the conditional half by a small hook of ours. Without CFG (FLUX; a guidance scale
of 1) the hooks run in diffusers' guidance-distilled mode: no CFG-Cache, attention reuse on every call. The
attention modules are the family's self-attention ATTENTION ones (`cat/families/`). The shared plumbing
(generation resets, exact removal, a skip-layer call that bypasses the hooks) is `cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from diffusers.hooks import ModelHook

from ..engine.diffusers_cache import CONTEXT, DiffusersCacheHandle
from ..engine.stats import MethodStats, StepRecord
from ..families import ATTENTION, family_for
from .base import (MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register,
                   scale_steps)

AUTHORS_STEPS = 50  # both authors' scripts sample 50 steps
NEVER_ENDS = 2**31  # the upper end of a step range that runs to the last step
ADDED_CONDITIONS_HOOK = "cat_fastercache_added_conditions"
# The transformer inputs that hold the [uncond, cond] batch (diffusers' list, and SD3's pooled text embedding).
CFG_INPUTS = ("hidden_states", "encoder_hidden_states", "timestep", "attention_mask", "encoder_attention_mask",
              "pooled_projections")


@register
@dataclass(frozen=True)
class FasterCacheConfig(MethodConfig):
    """FasterCache. Defaults: the authors' MMDiT setting below at 28 steps (`for_steps` scales the step fields to
    other step counts). `attention_interval=1` and `uncond_interval=1` reuse nothing: bit-exact.

    Attributes:
        attention_interval: a self-attention runs at every N-th call (diffusers' `spatial_attention_block_skip_range`).
        attention_weight: w of the attention extrapolation (diffusers' `attention_weight_callback`).
        uncond_interval: the unconditional half is computed at every n-th call (`unconditional_batch_skip_range`).
        warmup_steps: leading steps with no reuse at all (attention reuse starts here).
        uncond_start: the first step whose unconditional half may be skipped (no earlier than `warmup_steps`).
        low_freq_end: the last step at which a skipped step scales the low-frequency difference by `alpha_low`.
        high_freq_start: the first step at which it scales the high-frequency difference by `alpha_high`.
        alpha_low, alpha_high: those scales (the paper's alpha1, alpha2).

    The authors' setting per architecture, `FasterCacheConfig.authors(family, num_steps)` (Vchitect/FasterCache
    @02d05ef; no image model: MMDiT follows their CogVideoX code, the nearest (one joint attention over text and
    video tokens, as SD3's and FLUX's blocks), PixArt their Latte code, the nearest (Latte's blocks are
    PixArt-alpha's)). Their step thresholds are calls of their 50-step samplers (`counter`, from 1); here they are
    0-based steps, scaled to `num_steps` (`scale_steps`, rounded), the intervals and weights kept.

    | field | MMDiT: `scripts/cogvideox/fastercache_sample_cogvideox.py` | PixArt: `scripts/latte/fastercache_sample_latte.py` |
    |---|---|---|
    | attention_interval | 3 (`fastercache_layer_forward`: reuse when `counter % 3 != 0`) | 2 (`fastercache_spa_forward`: reuse when `counter % 2 == 0`) |
    | attention_weight | 0.3 (same function: `* 0.3`) | 0.5 (same: `* 0.5`) |
    | uncond_interval | 5 (`DiffusionTransformer.forward`, patched: `counter % 5 != 0` skips) | 5 (`fastercache_model_forward`) |
    | warmup_steps | 17 of 50 (attention reuse from `counter >= 18`) | 15 of 50 (`counter >= 16`) |
    | uncond_start | 17 of 50 (`counter >= 18`) | 17 of 50 (`counter >= 18`) |
    | low_freq_end | 39 of 50 (`counter <= 40`) | 43 of 50 (`counter < 45`) |
    | high_freq_start | 29 of 50 (`counter >= 30`) | 44 of 50 (`elif counter > 35`, after `counter < 45`) |
    | alpha_low, alpha_high | 1.1, 1.1 | 1.1, 1.1 |

    Where ours deviates (diffusers' hooks, `FasterCacheDenoiserHook` / `FasterCacheBlockHook`): their counts
    start at 0 where the authors' start at 1, so at interval 3 and 5 a different phase of steps computes (at 2 the
    same); with CFG, attention is reused only on calls whose unconditional half is skipped (the authors reuse it on
    full-batch steps too); the attention cache also rolls on reused steps, so a second reuse in a row
    extrapolates from the first (the authors' keeps the last two computed outputs); the (uncond - cond) difference
    is recorded at every full step (the authors' from `counter >= 16`); and the authors' Latte code also reuses
    temporal attention, which an image model has none of.
    """

    name: ClassVar[str] = "fastercache"
    attention_interval: int = 3
    attention_weight: float = 0.3
    uncond_interval: int = 5
    warmup_steps: int = 10  # 17 of 50 at 28 steps
    uncond_start: int = 10
    low_freq_end: int = 22
    high_freq_start: int = 16
    alpha_low: float = 1.1
    alpha_high: float = 1.1

    def __post_init__(self):
        for name in ("attention_interval", "uncond_interval"):
            check(is_int(getattr(self, name)) and getattr(self, name) >= 1, self, name, "an integer >= 1")
        for name in ("uncond_start", "low_freq_end", "high_freq_start"):
            check(is_int(getattr(self, name)) and getattr(self, name) >= 0, self, name, "an integer >= 0 (a step)")
        check(is_num(self.attention_weight) and math.isfinite(self.attention_weight), self, "attention_weight",
              "a finite number")
        for name in ("alpha_low", "alpha_high"):
            check(is_num(getattr(self, name)) and math.isfinite(getattr(self, name)) and getattr(self, name) > 0,
                  self, name, "a finite number > 0")
        check_warmup(self)

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    @classmethod
    def for_steps(cls, num_steps: int) -> dict:
        """The authors' MMDiT steps (17, 17, 39, 29 of 50) at `num_steps`."""
        return _authors_steps(17, 17, 39, 29, num_steps)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their CogVideoX setting on MMDiT, their Latte setting on PixArt, at `num_steps` (see the class
        docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            return {"attention_interval": 3, "attention_weight": 0.3, "uncond_interval": 5,
                    **_authors_steps(17, 17, 39, 29, num_steps), "alpha_low": 1.1, "alpha_high": 1.1}
        return {"attention_interval": 2, "attention_weight": 0.5, "uncond_interval": 5,
                **_authors_steps(15, 17, 43, 44, num_steps), "alpha_low": 1.1, "alpha_high": 1.1}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["FasterCacheConfig", "FasterCacheConfig"]:
        return (cls(attention_interval=1, uncond_interval=1, warmup_steps=1),
                cls(attention_interval=3, uncond_interval=3, warmup_steps=1, uncond_start=1))


def _authors_steps(warmup: int, uncond: int, low_end: int, high_start: int, num_steps: int) -> dict:
    """The authors' 0-based steps of 50, scaled to `num_steps` (the warm-up kept below `num_steps`)."""
    steps = {"warmup_steps": warmup, "uncond_start": uncond, "low_freq_end": low_end, "high_freq_start": high_start}
    out = {name: scale_steps(step, num_steps, AUTHORS_STEPS) for name, step in steps.items()}
    out["warmup_steps"] = min(out["warmup_steps"], max(1, num_steps - 1))
    return out


@dataclass
class FasterCacheStats(MethodStats):
    """Steps "full" (nothing reused) or "partial"; all transformer calls; the steps whose unconditional half was
    skipped; attention calls computed and reused (the current or last generation)."""

    transformer_calls: int = 0
    uncond_skipped: list[int] = field(default_factory=list)
    attentions_computed: int = 0
    attentions_reused: int = 0


class AddedConditionsHook(ModelHook):
    """Inside diffusers' denoiser hook: when it passes the conditional half of the batch, cuts the size conditions
    of PixArt-alpha (`added_cond_kwargs`, a dict it does not split) to that half too."""

    def pre_forward(self, module, *args, **kwargs):
        added = kwargs.get("added_cond_kwargs")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(added, dict) and isinstance(hidden, torch.Tensor):
            b = hidden.shape[0]
            kwargs["added_cond_kwargs"] = {
                k: v[b:] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == 2 * b else v
                for k, v in added.items()}  # the conditional half is the second
        return args, kwargs


class FasterCacheHandle(DiffusersCacheHandle):
    """`diffusers.hooks.apply_faster_cache` on the transformer and the family's self-attentions, with step-index
    ranges and counting weight callbacks."""

    def __init__(self, target, config):
        super().__init__(target, config)
        from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK

        self.hook_names = (_FASTER_CACHE_DENOISER_HOOK, _FASTER_CACHE_BLOCK_HOOK, ADDED_CONDITIONS_HOOK)

    def _register_hooks(self) -> None:
        from diffusers.hooks import FasterCacheConfig as DiffusersFasterCacheConfig
        from diffusers.hooks import HookRegistry, apply_faster_cache

        c = self.config
        family = family_for(self.transformer, "FasterCache", ATTENTION)
        identifiers = tuple(f"^(?:{p})$" for p in family.modules[ATTENTION])  # diffusers uses re.search
        HookRegistry.check_if_exists_or_initialize(self.transformer).register_hook(AddedConditionsHook(),
                                                                                   ADDED_CONDITIONS_HOOK)
        config = DiffusersFasterCacheConfig(
            spatial_attention_block_skip_range=c.attention_interval,
            spatial_attention_timestep_skip_range=(c.warmup_steps - 1, NEVER_ENDS),
            temporal_attention_block_skip_range=None,
            unconditional_batch_skip_range=c.uncond_interval,
            unconditional_batch_timestep_skip_range=(max(c.warmup_steps, c.uncond_start) - 1, NEVER_ENDS),
            spatial_attention_block_identifiers=identifiers,
            temporal_attention_block_identifiers=(),
            attention_weight_callback=self._attention_weight,
            low_frequency_weight_callback=self._low_weight,
            high_frequency_weight_callback=self._high_weight,
            tensor_format="BCHW",
            current_timestep_callback=self.current_step,
        )
        config._unconditional_conditional_input_kwargs_identifiers = CFG_INPUTS
        _quiet(apply_faster_cache, self.transformer, config)
        self._reused: set[int] = set()
        self._uncond_skipped = False

    def current_step(self) -> int:
        """The step of the current call (what diffusers' hooks compare their ranges with)."""
        return len(self._steps)

    def _attention_weight(self, module) -> float:
        self._reused.add(id(module))
        return self.config.attention_weight

    def _low_weight(self, module) -> float:
        self._uncond_skipped = True  # diffusers asks both weights once per call that skips the unconditional half
        return self.config.alpha_low if self.current_step() <= self.config.low_freq_end else 1.0

    def _high_weight(self, module) -> float:
        return self.config.alpha_high if self.current_step() >= self.config.high_freq_start else 1.0

    def _before_call(self) -> None:
        if self._starting:  # CFG or not is known when the generation's prompt is encoded
            for _, hook in self._own_state:
                hook.is_guidance_distilled = not self.clock.cfg_pairs
        self._reused, self._uncond_skipped = set(), False

    def _after_call(self, context_name: str) -> None:
        if context_name != CONTEXT:
            return
        attentions = len(self._own_state) - 1  # every hook but the denoiser's sits on an attention
        self._counts["attentions_reused"] += len(self._reused)
        self._counts["attentions_computed"] += attentions - len(self._reused)
        if self._uncond_skipped:
            self._counts["uncond_skipped"].append(len(self._steps))

    def _fresh_counts(self) -> dict:
        return {"uncond_skipped": [], "attentions_computed": 0, "attentions_reused": 0}

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        reused = self._counts["attentions_reused"] > before["attentions_reused"]
        if reused or step in self._counts["uncond_skipped"]:
            return StepRecord(step, "partial")
        return StepRecord(step, "full", tokens)

    @property
    def stats(self) -> FasterCacheStats:
        """Transformer calls, the steps whose unconditional half was skipped, attention calls computed and reused."""
        return FasterCacheStats(steps=list(self._steps), **self._counts)


def _quiet(apply, module, config) -> None:
    """`apply(module, config)` without diffusers' "purely experimental feature" warning, which every run would print."""
    from diffusers.utils import logging

    logger = logging.get_logger("diffusers.hooks.faster_cache")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        apply(module, config)
    finally:
        logger.setLevel(level)


FasterCacheConfig.handle = FasterCacheHandle
