"""DBCache, the Dual Block Cache of cache-dit (github.com/vipshop/cache-dit), with its TaylorSeer calibrator.

The first `fn_blocks` blocks (Fn) always run. Their output residual (the Fn output minus the block stack's input)
is compared with the one of the last computed step: when the relative L1 difference, mean |R - R_prev| / mean
|R_prev| over the whole batch, is below `threshold`, the middle blocks are skipped and the residual they added
at the last computed step is added to the Fn output instead; the last `bn_blocks` blocks (Bn) always run, on
that result. With `taylorseer_order` k >= 1 (cache-dit's TaylorSeer calibrator) the middle residual of a cached
step is not reused but forecast by a Taylor expansion of order k in the step index, from the residuals of the
last computed steps (`cat.core.forecast`). The first `warmup_steps` steps always compute, and at most
`max_cached_steps` steps in all and `max_continuous_cached_steps` in a row are cached. Implemented, like
`fbcache`, as small diffusers `ModelHook`s on the blocks; the shared plumbing (cache context, generation resets,
exact removal) is `cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.forecast import forecast, update_factors
from ..engine.diffusers_cache import DiffusersCacheHandle, diffusers_blocks
from ..engine.stats import StepRecord
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register
from .fbcache import BlockSkipStats, _split


@register
@dataclass(frozen=True)
class DBCacheConfig(MethodConfig):
    """DBCache (cache-dit). Defaults: the authors' setting below. `threshold=0` (or `max_cached_steps=0`)
    never caches: bit-exact; a threshold of 1 or more caches every allowed step without comparing (as theirs).

    Attributes:
        threshold: the relative L1 difference of the Fn residual below which the middle blocks are cached
            (cache-dit's `residual_diff_threshold`).
        fn_blocks: the leading blocks that always run and whose residual is compared (`Fn_compute_blocks`).
        bn_blocks: the trailing blocks that always run, also on cached steps (`Bn_compute_blocks`).
        warmup_steps: leading steps never cached (`max_warmup_steps`, with their `warmup_interval` 1).
        max_cached_steps: at most this many cached steps per generation (None: no limit; their -1).
        max_continuous_cached_steps: at most this many cached steps in a row (None: no limit; their -1).
        taylorseer_order: 0 reuses the middle residual of the last computed step; k >= 1 forecasts it with
            cache-dit's TaylorSeer calibrator of order k (`TaylorSeerCalibratorConfig.taylorseer_order`).

    The authors' setting per architecture, `DBCacheConfig.authors(family, num_steps)` (vipshop/cache-dit
    @f86744a; no per-model setting for FLUX, SD3 or PixArt: their example runner, `examples/generate.py`, runs
    every model, FLUX.1-dev and PixArt-Sigma included, with the defaults of its command line, which are these; the
    warm-up is a fixed step count there at any step count).

    | field | MMDiT and PixArt: `src/cache_dit/_utils/utils.py` `get_args` |
    |---|---|
    | threshold | 0.12 (`--residual-diff-threshold`) |
    | fn_blocks | 1 (`--Fn-compute-blocks`) |
    | bn_blocks | 0 (`--Bn-compute-blocks`) |
    | warmup_steps | 8 (`--max-warmup-steps`; `--warmup-interval` 1) |
    | max_cached_steps | None (`--max-cached-steps` -1) |
    | max_continuous_cached_steps | 3 (`--max-continuous-cached-steps`) |
    | taylorseer_order | 0 (`--taylorseer` off; `--taylorseer-order` 1 when on) |

    Their other recommendations: the library's own `DBCacheConfig` defaults (F8B0, threshold 0.08, 8 warm-up
    steps, no limits; `src/cache_dit/caching/cache_contexts/cache_config.py` `BasicCacheConfig`, for 28-step
    FLUX in `docs/user_guide/DBCACHE_DESIGN.md`), and "TaylorSeer + DBCache FnB0" with order 1
    (`docs/user_guide/CACHE_API.md`; `examples/configs/cache.yaml`: F1B0, 0.12, 8 warm-up steps at interval 2,
    at most 2 in a row, order 1).

    The rules follow their code: the decision `CachedContextManager.can_cache` and `similarity`
    (`cache_contexts/cache_manager.py`), the block order `CachedBlocks_Pattern_Base.forward` (`cache_blocks/
    pattern_base.py`), the count of cached steps in a row `CachedContext.add_cached_step` (a computed step
    between two cached ones does not reset it; reaching the limit computes one step and restarts the count), and
    the calibrator `TaylorSeerState.derivative` / `approximate` (`cache_contexts/calibrators/taylorseer.py`): the
    factors are updated at computed steps only, the differences divided by the steps between them, and the first
    difference is taken at the update of step 3 or later (their `current_step > 1`, its counter created at the
    first update, one behind the step index). The text stream's middle residual is cached (and forecast) beside the
    image stream's where the middle blocks return one.

    Where ours deviates: no CFG-separate mode (SD3 and PixArt batch both halves in one call, as cache-dit's
    `enable_separate_cfg=False` for SD3; FLUX's true-CFG calls share one state), no warm-up interval,
    no `max_accumulated_residual_diff_threshold`, and the step count bounds every setting at one generation (theirs
    refreshes the context per pipeline call too).
    """

    name: ClassVar[str] = "dbcache"
    threshold: float = 0.12
    fn_blocks: int = 1
    bn_blocks: int = 0
    warmup_steps: int = 8
    max_cached_steps: int | None = None
    max_continuous_cached_steps: int | None = 3
    taylorseer_order: int = 0

    def __post_init__(self):
        check(is_num(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0, self, "threshold",
              "a finite number >= 0")
        check(is_int(self.fn_blocks) and self.fn_blocks >= 1, self, "fn_blocks", "an integer >= 1")
        check(is_int(self.bn_blocks) and self.bn_blocks >= 0, self, "bn_blocks", "an integer >= 0")
        check_warmup(self)
        for field in ("max_cached_steps", "max_continuous_cached_steps"):
            value = getattr(self, field)
            check(value is None or (is_int(value) and value >= 0), self, field, "None (no limit) or an integer >= 0")
        check(is_int(self.taylorseer_order) and 0 <= self.taylorseer_order <= 4, self, "taylorseer_order",
              "an integer in [0, 4] (0: reuse the residual, k: forecast it with order k)")

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """cache-dit's example defaults, for every architecture (see the class docstring)."""
        architecture(cls, family, num_steps)
        return {"threshold": 0.12, "fn_blocks": 1, "bn_blocks": 0, "warmup_steps": 8, "max_cached_steps": None,
                "max_continuous_cached_steps": 3, "taylorseer_order": 0}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["DBCacheConfig", "DBCacheConfig"]:
        return cls(threshold=0.0), cls(threshold=1.0, warmup_steps=1, max_continuous_cached_steps=None,
                                       taylorseer_order=1)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """mean |current - previous| / mean |previous| over every element (a 0-d tensor)."""
    return (current - previous).abs().mean() / previous.abs().mean()


def block_output(meta, hidden: torch.Tensor, encoder: torch.Tensor | None):
    """`hidden` (and `encoder`) in the output layout diffusers' block metadata `meta` describes."""
    h, e = meta.return_hidden_states_index, meta.return_encoder_hidden_states_index
    if e is None:
        return hidden
    out = [None] * (max(h, e) + 1)
    out[h], out[e] = hidden, encoder
    return tuple(out)


def pass_through(meta, args: tuple, kwargs: dict):
    """A skipped block's output: its own inputs, in its output layout."""
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    if meta.return_encoder_hidden_states_index is None:
        return hidden
    return block_output(meta, hidden, meta._get_parameter_from_args_kwargs(
        meta.encoder_hidden_states_argument_name, args, kwargs))


class _DBCState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0  # calls of this cache context so far (its steps: one call per step and context)
        self.step = -1  # the current call's step
        self.stack_input = None  # the block stack's hidden input at the current call
        self.fn_residual = None  # the Fn residual of the last computed step
        self.fn_output = None  # (hidden, encoder) after the Fn blocks at the current call
        self.residual = {}  # "hidden" / "encoder" -> the middle residual of the last computed step
        self.factors = {}  # "hidden" / "encoder" -> Taylor factors [R, dR, ...] at the last computed step
        self.computed_at = None  # the last computed step
        self.cached_steps: list[int] = []
        self.continuous = 0  # cache-dit's count of cached steps in a row
        self.skip = False


def _dbc_hooks():
    """DBCache's hooks, built on diffusers' ModelHook and block metadata (imported lazily)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.hooks.hooks import ModelHook
    from diffusers.utils.torch_utils import unwrap_module

    class DBCFnHook(ModelHook):
        """On the first block (records the stack's input) and on the last Fn block (decides the step)."""

        _is_stateful = True

        def __init__(self, state_manager, config: DBCacheConfig, first: bool, decides: bool):
            super().__init__()
            self.state_manager, self.config, self.first, self.decides = state_manager, config, first, decides

        def initialize_hook(self, module):
            self.meta = TransformerBlockRegistry.get(unwrap_module(module).__class__)
            return module

        def new_forward(self, module, *args, **kwargs):
            state = self.state_manager.get_state()
            if self.first:
                state.stack_input = self.meta._get_parameter_from_args_kwargs(
                    self.meta.hidden_states_argument_name, args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.decides:
                hidden, encoder = _split(output, self.meta)
                residual = hidden - state.stack_input
                state.step, state.calls = state.calls, state.calls + 1
                state.skip = self._can_cache(residual, state)
                if state.skip:
                    self._add_cached_step(state)
                else:
                    state.fn_residual = residual
                state.fn_output = (hidden, encoder)
            return output

        def _can_cache(self, residual, state) -> bool:
            """cache-dit's `can_cache` (see the config's docstring), in its order."""
            c = self.config
            if state.step < c.warmup_steps:
                return False
            if c.max_cached_steps is not None and len(state.cached_steps) >= c.max_cached_steps:
                return False
            if c.max_continuous_cached_steps is not None and state.continuous >= c.max_continuous_cached_steps:
                state.continuous = 0
                return False
            if c.threshold <= 0 or state.fn_residual is None:
                return False
            if c.threshold >= 1:
                return True
            return residual.shape == state.fn_residual.shape and self._difference(residual, state) < c.threshold

        @torch.compiler.disable
        def _difference(self, residual, state) -> float:
            return relative_l1(residual, state.fn_residual).item()

        @staticmethod
        def _add_cached_step(state) -> None:
            """cache-dit's `add_cached_step`: the count in a row grows on adjacent cached steps only."""
            if state.cached_steps:
                if state.step - state.cached_steps[-1] == 1:
                    state.continuous += 2 if state.continuous == 0 else 1
            else:
                state.continuous += 1
            state.cached_steps.append(state.step)

        def reset_state(self, module):
            self.state_manager.reset()
            return module

    class DBCMiddleHook(ModelHook):
        """On each middle block: passes its inputs through on cached steps; the last one adds the cached (or
        forecast) middle residual there, and records the residual on computed steps."""

        def __init__(self, state_manager, order: int, last: bool, counts):
            super().__init__()
            self.state_manager, self.order, self.last, self.counts = state_manager, order, last, counts

        def initialize_hook(self, module):
            self.meta = TransformerBlockRegistry.get(unwrap_module(module).__class__)
            return module

        def new_forward(self, module, *args, **kwargs):
            state = self.state_manager.get_state()
            if state.skip:
                self.counts()["blocks_skipped"] += 1
                if not self.last:
                    return pass_through(self.meta, args, kwargs)
                hidden, encoder = state.fn_output
                residual = self._cached(state)
                if encoder is not None and "encoder" in residual:
                    encoder = encoder + residual["encoder"]
                return block_output(self.meta, hidden + residual["hidden"], encoder)
            output = self.fn_ref.original_forward(*args, **kwargs)
            self.counts()["blocks_computed"] += 1
            if self.last:
                self._record(output, state)
            return output

        def _cached(self, state) -> dict:
            if not self.order:
                return state.residual
            elapsed = state.step - state.computed_at
            return {name: forecast(factors, elapsed) for name, factors in state.factors.items()}

        def _record(self, output, state) -> None:
            hidden, encoder = _split(output, self.meta)
            fn_hidden, fn_encoder = state.fn_output
            residual = {"hidden": hidden - fn_hidden}
            # SD3's last block is context_pre_only and returns no text stream: nothing to cache for it
            if encoder is not None and fn_encoder is not None and encoder.shape == fn_encoder.shape:
                residual["encoder"] = encoder - fn_encoder
            if self.order:
                window = 0 if state.computed_at is None else state.step - state.computed_at
                differences = state.step - 1 > 1
                state.factors = {name: update_factors(state.factors.get(name) if differences else None, value,
                                                      window, self.order)
                                 for name, value in residual.items()}
            else:
                state.residual = residual
            state.computed_at = state.step

    return DBCFnHook, DBCMiddleHook


class DBCacheHandle(DiffusersCacheHandle):
    """DBCache as diffusers hooks: on the first and the last Fn block, and on every middle block; the Bn blocks
    run untouched."""

    hook_names = ("cat_dbc_fn_hook", "cat_dbc_middle_hook")

    def _register_hooks(self) -> None:
        from diffusers.hooks._helpers import TransformerBlockRegistry
        from diffusers.hooks.hooks import HookRegistry, StateManager

        c = self.config
        blocks = diffusers_blocks(self.transformer)
        if c.fn_blocks + c.bn_blocks >= len(blocks):
            raise ValueError(f"DBCacheConfig: fn_blocks={c.fn_blocks} + bn_blocks={c.bn_blocks} leave no middle block "
                             f"to cache in {type(self.transformer).__name__}'s {len(blocks)} blocks; their sum must be "
                             f"smaller than {len(blocks)}")
        for _, block in blocks:
            TransformerBlockRegistry.get(type(block))  # raises for blocks diffusers has no metadata for
        fn_cls, middle_cls = _dbc_hooks()
        manager = StateManager(_DBCState)
        counts = lambda: self._counts  # noqa: E731 (the dict is replaced at each generation)
        fn_hook, middle_hook = self.hook_names
        last_fn = c.fn_blocks - 1
        for i in sorted({0, last_fn}):
            HookRegistry.check_if_exists_or_initialize(blocks[i][1]).register_hook(
                fn_cls(manager, c, first=i == 0, decides=i == last_fn), fn_hook)
        middle = range(c.fn_blocks, len(blocks) - c.bn_blocks)
        for i in middle:
            HookRegistry.check_if_exists_or_initialize(blocks[i][1]).register_hook(
                middle_cls(manager, c.taylorseer_order, i == middle[-1], counts), middle_hook)

    def _fresh_counts(self) -> dict:
        return {"skipped_calls": [], "blocks_computed": 0, "blocks_skipped": 0}

    def _after_call(self, context_name: str) -> None:
        self._counts["blocks_computed"] += self.config.fn_blocks + self.config.bn_blocks  # they always run
        if self._managers[0].get_state().skip:
            self._counts["skipped_calls"].append(self._counts["transformer_calls"] - 1)

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        skipped = self._counts["blocks_skipped"] > before["blocks_skipped"]
        return StepRecord(step, "skipped") if skipped else StepRecord(step, "full", tokens)

    @property
    def stats(self) -> BlockSkipStats:
        """Transformer calls, the calls whose middle blocks were cached, blocks computed and skipped."""
        return BlockSkipStats(steps=list(self._steps), **self._counts)


DBCacheConfig.handle = DBCacheHandle
