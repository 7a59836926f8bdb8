"""Peer methods built on the step-caching hooks that diffusers ships: TaylorSeer, First-Block Cache, MagCache.

- `TaylorSeerConfig` ("taylorseer"): Liu et al. 2025, "From Reusing to Forecasting: Accelerating Diffusion
  Models with TaylorSeers", arXiv 2503.06923. Attention and feed-forward outputs are computed fully every
  `cache_interval` steps and forecast in between with a Taylor expansion in the step index
  (`diffusers.hooks.apply_taylorseer_cache`).
- `FBCacheConfig` ("fbcache"): First-Block Cache of ParaAttention (github.com/chengzeyi/ParaAttention), the idea
  of TeaCache (Liu et al. 2024, arXiv 2411.19108) with the first block's residual as the change indicator. Block 0
  always runs; when the relative L1 change of its residual since the last fully computed step is below
  `threshold`, the remaining blocks are skipped and their cached residual is added instead. Implemented here as
  small diffusers `ModelHook`s because `diffusers.hooks.apply_first_block_cache` breaks on SD3 (its last block
  returns no text stream).
- `MagCacheConfig` ("magcache"): Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache",
  arXiv 2506.09045. Whole steps are skipped (the last residual of the block stack is reused) while the error
  accumulated from calibrated residual-magnitude ratios stays below `threshold` (`diffusers.hooks.apply_mag_cache`).
  Ratios come from `calibrate_magcache(pipe, prompts, num_inference_steps)`.

SD3Transformer2DModel and PixArtTransformer2DModel have no `CacheMixin` in diffusers 0.42, so their pipelines never
open a `cache_context`: the handles open one around every transformer call themselves (unless the pipeline already
did, as FLUX's does), and reset the hook state when a new generation starts (the pipeline's `encode_prompt` call,
or, for a bare transformer, a timestep larger than the previous call's).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import MethodConfig, MethodHandle, check, is_int, is_num, register

# Modules whose outputs TaylorSeer forecasts, per transformer class (regexes matched with `re.fullmatch`). diffusers'
# defaults (`^transformer_blocks.*attn`, ...) hook nothing on PixArt (`attn1`/`attn2`) and no feed-forward anywhere;
# the authors forecast both the attention and the MLP outputs of every block.
TAYLORSEER_MODULES: dict[str, tuple[str, ...]] = {
    "SD3Transformer2DModel": (r"transformer_blocks\.\d+\.(attn|attn2|ff|ff_context)",),
    "PixArtTransformer2DModel": (r"transformer_blocks\.\d+\.(attn1|attn2|ff)",),
    "FluxTransformer2DModel": (
        r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
        r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)",
    ),
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SKIP_LAYERS_CONTEXT = "skip_layers"  # SD3 skip-layer-guidance calls keep a cache state of their own


# ----------------------------------------------------------------------------------------------------- configs
@register
@dataclass(frozen=True)
class TaylorSeerConfig(MethodConfig):
    """TaylorSeer. Defaults: the authors' FLUX "fast" setting (full step every 5, 2nd-order forecast, 3 full
    warm-up steps). `cache_interval=1` (or a warm-up covering every step) computes everything: bit-exact."""

    name: ClassVar[str] = "taylorseer"
    cache_interval: int = 5
    max_order: int = 2
    disable_cache_before_step: int = 3
    disable_cache_after_step: int | None = None
    factors_dtype: str | None = None  # None: keep each module's output dtype, as the authors do
    cache_modules: tuple[str, ...] | None = None  # regexes (re.fullmatch); None: TAYLORSEER_MODULES of the family

    def __post_init__(self):
        check(is_int(self.cache_interval) and self.cache_interval >= 1, self, "cache_interval", "an integer >= 1")
        check(is_int(self.max_order) and 0 <= self.max_order <= 4, self, "max_order", "an integer in [0, 4]")
        check(is_int(self.disable_cache_before_step) and self.disable_cache_before_step >= 1, self,
              "disable_cache_before_step", "an integer >= 1 (the first step has nothing to forecast from)")
        after = self.disable_cache_after_step
        check(after is None or (is_int(after) and after >= self.disable_cache_before_step), self,
              "disable_cache_after_step", "None or an integer >= disable_cache_before_step")
        check(self.factors_dtype is None or self.factors_dtype in _DTYPES, self, "factors_dtype",
              f"None or one of {sorted(_DTYPES)}")
        modules = self.cache_modules
        if isinstance(modules, (list, tuple)):
            object.__setattr__(self, "cache_modules", modules := tuple(modules))
        check(modules is None or (len(modules) > 0 and all(isinstance(p, str) and _compiles(p) for p in modules)),
              self, "cache_modules", "None or a non-empty sequence of valid regular expressions")

    def check_steps(self, num_steps: int) -> None:
        check(self.disable_cache_before_step < num_steps, self, "disable_cache_before_step",
              f"smaller than the number of steps ({num_steps}), or TaylorSeer changes nothing")


@register
@dataclass(frozen=True)
class FBCacheConfig(MethodConfig):
    """First-Block Cache. Default: ParaAttention's default for FLUX (0.08). `threshold=0` never skips: bit-exact."""

    name: ClassVar[str] = "fbcache"
    threshold: float = 0.08

    def __post_init__(self):
        check(is_num(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0, self, "threshold",
              "a finite number >= 0")


@register
@dataclass(frozen=True)
class MagCacheConfig(MethodConfig):
    """MagCache. Defaults: the authors' FLUX setting E024K5R01 (threshold 0.24, at most 5 consecutive skipped
    steps, first 10% of the steps always computed). `mag_ratios` are model-specific: get them with
    `calibrate_magcache` (FLUX falls back to diffusers' `FLUX_MAG_RATIOS`). `threshold=0` or `max_skip_steps=0`
    never skips: bit-exact."""

    name: ClassVar[str] = "magcache"
    threshold: float = 0.24
    max_skip_steps: int = 5
    retention_ratio: float = 0.1
    mag_ratios: tuple[float, ...] | None = None

    def __post_init__(self):
        check(is_num(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0, self, "threshold",
              "a finite number >= 0")
        check(is_int(self.max_skip_steps) and self.max_skip_steps >= 0, self, "max_skip_steps", "an integer >= 0")
        check(is_num(self.retention_ratio) and 0 <= self.retention_ratio <= 1, self, "retention_ratio",
              "a number in [0, 1]")
        ratios = self.mag_ratios
        if isinstance(ratios, Sequence) and not isinstance(ratios, str) and all(is_num(r) for r in ratios):
            object.__setattr__(self, "mag_ratios", ratios := tuple(float(r) for r in ratios))
        check(ratios is None or (isinstance(ratios, tuple) and len(ratios) >= 2
                                 and all(math.isfinite(r) and r > 0 for r in ratios)),
              self, "mag_ratios", "None or a sequence of at least 2 finite positive numbers (see calibrate_magcache)")

    def check_steps(self, num_steps: int) -> None:
        check(int(self.retention_ratio * num_steps + 0.5) < num_steps, self, "retention_ratio",
              f"small enough to leave some of the {num_steps} steps skippable, or MagCache changes nothing")


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


# ----------------------------------------------------------------------------------------------------- handles
class _CacheHandle(MethodHandle):
    """Installs diffusers hooks on the transformer's modules, opens a cache context around every transformer call,
    starts a new cache state at every generation, and undoes all of it exactly on `remove()`."""

    hook_names: ClassVar[tuple[str, ...]] = ()

    def _install(self) -> None:
        t = self.transformer
        for name, module in t.named_modules():
            registry = vars(module).get("_diffusers_hook")
            if registry is not None and any(h in registry.hooks for h in self.hook_names):
                raise RuntimeError(f"{type(self.config).__name__}: {name or 'the transformer'} already carries "
                                   f"{'/'.join(self.hook_names)} hooks; remove the other handle first")
        self._snapshot = {name: ("forward" in vars(m), "_diffusers_hook" in vars(m)) for name, m in t.named_modules()}
        self._undo.append(self._unhook)
        self._register_hooks()
        self._hooks = [(m, reg.hooks[h]) for _, m in t.named_modules() if (reg := vars(m).get("_diffusers_hook"))
                       for h in reg._hook_order if h in self.hook_names]
        if not self._hooks:
            raise ValueError(f"{type(self.config).__name__}: no module of {type(t).__name__} matched")
        self._managers = list({id(hook.state_manager): hook.state_manager for _, hook in self._hooks}.values())
        self._invalidate_registry_cache()
        self._counts: dict[str, Any] = {}
        self._last_timestep: float | None = None
        self._new_generation()
        self._wrap_forward()
        if self._pipe is not None and hasattr(self._pipe, "encode_prompt"):
            self._observe_encode_prompt()

    @property
    def stats(self) -> dict:
        """Counts of the current or last generation (transformer calls; computed vs skipped/forecast work)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._counts.items()}

    # --- per-method parts
    def _register_hooks(self) -> None:
        raise NotImplementedError

    def _fresh_counts(self) -> dict:
        return {"transformer_calls": 0}

    def _before_call(self) -> None:
        """Runs with the cache context set, before the transformer computes."""

    def _after_call(self, context_name: str) -> None:
        """Runs with the cache context still set, after the transformer computed."""

    # --- generation and context bookkeeping
    def _new_generation(self) -> None:
        for manager in self._managers:
            context = manager._context  # a context the pipeline opened (FLUX) survives the reset
            manager.reset()
            manager.set_context(context)
        self._counts = self._fresh_counts()
        self._starting = True

    def _wrap_forward(self) -> None:
        t = self.transformer
        original = t.forward
        signature = inspect.signature(type(t).forward)
        observe_timestep = self._pipe is None or not hasattr(self._pipe, "encode_prompt")

        @functools.wraps(original)
        def forward(*args, **kwargs):
            if observe_timestep:
                self._observe_timestep(signature, args, kwargs)
            name = _SKIP_LAYERS_CONTEXT if kwargs.get("skip_layers") is not None else "cond"
            from diffusers.hooks.hooks import CacheContext

            opened = [m for m in self._managers if m._context is None]
            for manager in opened:
                manager.set_context(CacheContext(name))
            try:
                self._counts["transformer_calls"] += 1
                self._before_call()
                self._starting = False
                output = original(*args, **kwargs)
                self._after_call(self._managers[0].context.name)
            finally:
                for manager in opened:
                    manager.set_context(None)
            return output

        from ..adapters.base import set_instance_attr

        set_instance_attr(t, "forward", forward, self._undo)

    def _observe_timestep(self, signature, args, kwargs) -> None:
        """Without a pipeline, a timestep larger than the previous call's starts a new generation."""
        timestep = signature.bind(self.transformer, *args, **kwargs).arguments.get("timestep")
        if timestep is None:
            return
        value = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self._last_timestep is not None and value > self._last_timestep:
            self._new_generation()
        self._last_timestep = value

    def _observe_encode_prompt(self) -> None:
        """A pipeline call starts by encoding its prompt: start a new cache state there."""
        from ..adapters.base import observe_encode_prompt

        observe_encode_prompt(self._pipe, lambda cfg_pairs: self._new_generation(), self._undo)

    # --- exact removal
    def _unhook(self) -> None:
        """diffusers' own `remove_hook` for each of our hooks, then drops what it leaves behind: the `forward`
        instance attribute it re-binds and registries that did not exist before."""
        for name, module in self.transformer.named_modules():
            had_forward, had_registry = self._snapshot.get(name, (False, False))
            registry = vars(module).get("_diffusers_hook")
            if registry is not None:
                for hook_name in reversed(list(registry._hook_order)):
                    if hook_name in self.hook_names:
                        registry.remove_hook(hook_name, recurse=False)
                if not had_registry and not registry.hooks:
                    del module._diffusers_hook
            forward = vars(module).get("forward")
            if not had_forward and getattr(forward, "__func__", None) is type(module).forward \
                    and getattr(forward, "__self__", None) is module:
                del module.forward
        self._invalidate_registry_cache()

    def _invalidate_registry_cache(self) -> None:
        registry = vars(self.transformer).get("_diffusers_hook")
        if registry is not None:
            registry.invalidate_child_registries_cache()


class TaylorSeerHandle(_CacheHandle):
    """`diffusers.hooks.apply_taylorseer_cache` with per-family module patterns.

    stats: transformer_calls, modules_computed and modules_forecast (hooked-module forward calls)."""

    def __init__(self, target, config):
        super().__init__(target, config)
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        self.hook_names = (_TAYLORSEER_CACHE_HOOK,)

    def _register_hooks(self) -> None:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        c, cls = self.config, type(self.transformer).__name__
        patterns = c.cache_modules or TAYLORSEER_MODULES.get(cls)
        if patterns is None:
            raise TypeError(f"TaylorSeerConfig has no module patterns for {cls}; pass cache_modules, or use one of "
                            f"{', '.join(sorted(TAYLORSEER_MODULES))}")
        apply_taylorseer_cache(self.transformer, TaylorSeerCacheConfig(
            cache_interval=c.cache_interval, disable_cache_before_step=c.disable_cache_before_step,
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
        return {"transformer_calls": 0, "modules_computed": 0, "modules_forecast": 0}


class _FBCState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.head_residual = None  # block 0's residual at the last fully computed call
        self.head_output = None  # (hidden, encoder) after block 0 at that call
        self.tail_residual = None  # (hidden, encoder) residual of the remaining blocks at that call
        self.skip = False


def _split(output, meta):
    if not isinstance(output, tuple):
        return output, None
    e = meta.return_encoder_hidden_states_index
    return output[meta.return_hidden_states_index], None if e is None else output[e]


def _join(output, meta, hidden, encoder):
    if not isinstance(output, tuple):
        return hidden
    out = list(output)
    out[meta.return_hidden_states_index] = hidden
    if meta.return_encoder_hidden_states_index is not None:
        out[meta.return_encoder_hidden_states_index] = encoder
    return tuple(out)


def _fbc_hooks():
    """The First-Block-Cache hooks, built on diffusers' ModelHook and block metadata (imported lazily)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.hooks.hooks import ModelHook
    from diffusers.utils.torch_utils import unwrap_module

    class FBCHeadHook(ModelHook):
        _is_stateful = True

        def __init__(self, state_manager, threshold: float, counts):
            super().__init__()
            self.state_manager, self.threshold, self.counts = state_manager, threshold, counts

        def initialize_hook(self, module):
            self.meta = TransformerBlockRegistry.get(unwrap_module(module).__class__)
            return module

        def new_forward(self, module, *args, **kwargs):
            meta = self.meta
            hidden_in = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
            self.counts()["blocks_computed"] += 1
            hidden, encoder = _split(output, meta)
            residual = hidden - hidden_in
            state = self.state_manager.get_state()
            state.skip = state.tail_residual is not None and self._relative_change(residual, state) < self.threshold
            if state.skip:
                hidden_res, encoder_res = state.tail_residual
                if encoder is not None and encoder_res is not None:
                    encoder = encoder + encoder_res
                return _join(output, meta, hidden + hidden_res, encoder)
            state.head_residual, state.head_output = residual, (hidden, encoder)
            return output

        @torch.compiler.disable
        def _relative_change(self, residual, state) -> float:
            previous = state.head_residual
            return ((residual - previous).abs().mean() / previous.abs().mean()).item()

        def reset_state(self, module):
            self.state_manager.reset()
            return module

    class FBCBlockHook(ModelHook):
        def __init__(self, state_manager, is_tail: bool, counts):
            super().__init__()
            self.state_manager, self.is_tail, self.counts = state_manager, is_tail, counts

        def initialize_hook(self, module):
            self.meta = TransformerBlockRegistry.get(unwrap_module(module).__class__)
            return module

        def new_forward(self, module, *args, **kwargs):
            meta, state = self.meta, self.state_manager.get_state()
            if state.skip:  # pass the inputs through in the block's output layout
                self.counts()["blocks_skipped"] += 1
                hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
                h, e = meta.return_hidden_states_index, meta.return_encoder_hidden_states_index
                if e is None:
                    return hidden
                out = [None] * (max(h, e) + 1)
                out[h] = hidden
                out[e] = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
                return tuple(out)
            output = self.fn_ref.original_forward(*args, **kwargs)
            self.counts()["blocks_computed"] += 1
            if self.is_tail:
                hidden, encoder = _split(output, meta)
                head_hidden, head_encoder = state.head_output
                # SD3's last block is context_pre_only and returns no text stream: nothing to cache for it.
                same = encoder is not None and head_encoder is not None and encoder.shape == head_encoder.shape
                state.tail_residual = (hidden - head_hidden, encoder - head_encoder if same else None)
            return output

    return FBCHeadHook, FBCBlockHook


def _transformer_blocks(transformer) -> list[tuple[str, torch.nn.Module]]:
    """The transformer blocks in call order, as diffusers' block caches find them."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [(f"{name}.{i}", block) for name, blocks in transformer.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(blocks, torch.nn.ModuleList)
            for i, block in enumerate(blocks)]


class FBCacheHandle(_CacheHandle):
    """First-Block Cache as diffusers hooks: a head hook on the first block, pass-through-or-compute hooks on the
    others, the last one recording the residual of the remaining blocks.

    stats: transformer_calls, skipped_calls (indices of the calls whose remaining blocks were skipped),
    blocks_computed, blocks_skipped."""

    hook_names = ("cat_fbc_head_block_hook", "cat_fbc_block_hook")

    def _register_hooks(self) -> None:
        from diffusers.hooks._helpers import TransformerBlockRegistry
        from diffusers.hooks.hooks import HookRegistry, StateManager

        blocks = _transformer_blocks(self.transformer)
        if len(blocks) < 2:
            raise ValueError(f"FBCacheConfig needs at least 2 transformer blocks, {type(self.transformer).__name__} "
                             f"has {len(blocks)}")
        for name, block in blocks:
            TransformerBlockRegistry.get(type(block))  # raises for blocks diffusers has no metadata for
        head_cls, block_cls = _fbc_hooks()
        manager = StateManager(_FBCState)
        counts = lambda: self._counts  # noqa: E731 (the dict is replaced at each generation)
        head_hook, block_hook = self.hook_names
        HookRegistry.check_if_exists_or_initialize(blocks[0][1]).register_hook(
            head_cls(manager, self.config.threshold, counts), head_hook)
        for i, (_, block) in enumerate(blocks[1:], start=2):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                block_cls(manager, i == len(blocks), counts), block_hook)

    def _fresh_counts(self) -> dict:
        return {"transformer_calls": 0, "skipped_calls": [], "blocks_computed": 0, "blocks_skipped": 0}

    def _after_call(self, context_name: str) -> None:
        if self._managers[0].get_state().skip:
            self._counts["skipped_calls"].append(self._counts["transformer_calls"] - 1)


class MagCacheHandle(_CacheHandle):
    """`diffusers.hooks.apply_mag_cache`, re-configured at every generation for its actual number of steps
    (the pipeline scheduler's; for a bare transformer, `len(mag_ratios)`).

    stats: transformer_calls, skipped_calls (indices), blocks_computed, blocks_skipped; `mag_ratios` when
    calibrating."""

    calibrating = False  # set by calibrate_magcache: nothing is skipped, the magnitude ratios are recorded

    def __init__(self, target, config):
        super().__init__(target, config)
        from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

        self.hook_names = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)
        self._configs: dict[int, Any] = {}

    def _register_hooks(self) -> None:
        from diffusers.hooks import apply_mag_cache

        self._num_blocks = len(_transformer_blocks(self.transformer))
        if self._num_blocks == 0:
            raise ValueError(f"MagCacheConfig: {type(self.transformer).__name__} has no transformer blocks")
        if self.calibrating:
            from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig

            # More steps than any run: diffusers' end-of-run reset (and print) never fires; we reset per generation.
            self._ratios = None
            config = DiffusersMagCacheConfig(calibrate=True, num_inference_steps=2**31)
        else:
            self._ratios = self.config.mag_ratios or self._default_ratios()
            config = self._diffusers_config(len(self._ratios))
        apply_mag_cache(self.transformer, config)  # also adds an empty root registry, which `_unhook` drops again

    def _default_ratios(self) -> tuple[float, ...]:
        if type(self.transformer).__name__ == "FluxTransformer2DModel":
            from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

            return tuple(FLUX_MAG_RATIOS.tolist())
        raise ValueError(
            f"MagCacheConfig.mag_ratios=None is invalid for {type(self.transformer).__name__}: the magnitude ratios "
            f"are model-specific; compute them once with "
            f"cat.methods.diffusers_cache.calibrate_magcache(pipe, prompts, num_inference_steps) and pass "
            f"MagCacheConfig(mag_ratios=...)."
        )

    def _diffusers_config(self, num_steps: int):
        if num_steps not in self._configs:
            from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig

            c = self.config
            never = c.threshold == 0  # diffusers skips while error <= threshold: exact ratios of 1.0 would skip at 0
            self._configs[num_steps] = DiffusersMagCacheConfig(
                threshold=-1.0 if never else c.threshold, max_skip_steps=c.max_skip_steps,
                retention_ratio=c.retention_ratio, num_inference_steps=num_steps, mag_ratios=list(self._ratios),
            )
        return self._configs[num_steps]

    def _fresh_counts(self) -> dict:
        counts = {"transformer_calls": 0, "skipped_calls": [], "blocks_computed": 0, "blocks_skipped": 0}
        if self.calibrating:
            counts["mag_ratios"] = []
        return counts

    def _before_call(self) -> None:
        if self._starting and not self.calibrating and self._pipe is not None:
            timesteps = getattr(getattr(self._pipe, "scheduler", None), "timesteps", None)
            if timesteps is not None and len(timesteps) > 0:
                config = self._diffusers_config(len(timesteps))
                for _, hook in self._hooks:
                    hook.config = config

    def _after_call(self, context_name: str) -> None:
        state = self._managers[0].get_state()
        if state.should_compute:
            self._counts["blocks_computed"] += self._num_blocks
        else:
            self._counts["blocks_skipped"] += self._num_blocks
            self._counts["skipped_calls"].append(self._counts["transformer_calls"] - 1)
        if self.calibrating and context_name == "cond":
            self._counts["mag_ratios"] = list(state.calibration_ratios)


TaylorSeerConfig.handle = TaylorSeerHandle
FBCacheConfig.handle = FBCacheHandle
MagCacheConfig.handle = MagCacheHandle


def calibrate_magcache(pipe, prompts, num_inference_steps: int, **call_kwargs) -> list[float]:
    """MagCache's magnitude ratios for `pipe` at `num_inference_steps`, from diffusers' calibration mode.

    Runs one full generation per prompt (nothing skipped) and returns, per step, the mean over prompts of
    mean-over-tokens ||residual_t|| / ||residual_{t-1}|| of the whole block stack (1.0 at step 0). Pass the result
    as `MagCacheConfig(mag_ratios=...)`; it is interpolated to other step counts.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("calibrate_magcache needs at least one prompt")
    handle = MagCacheHandle(pipe, MagCacheConfig())
    handle.calibrating = True
    call_kwargs.setdefault("output_type", "latent")
    runs = []
    with handle.install():
        for prompt in prompts:
            pipe(prompt, num_inference_steps=num_inference_steps, **call_kwargs)
            ratios = handle.stats["mag_ratios"]
            if not ratios:
                raise RuntimeError("calibrate_magcache recorded no ratios: was the transformer called?")
            runs.append(ratios)
    return [sum(r[i] for r in runs) / len(runs) for i in range(min(map(len, runs)))]
