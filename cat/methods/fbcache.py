"""First-Block Cache of ParaAttention (github.com/chengzeyi/ParaAttention), the idea of TeaCache (Liu et al. 2024,
arXiv 2411.19108) with the first block's residual as the change indicator.

Block 0 always runs; when the relative L1 change of its residual since the last fully computed step is below
`threshold`, the remaining blocks are skipped and their cached residual is added instead. The first
`warmup_steps` steps (default 1: step 0, which has nothing cached yet) are never skipped. Implemented here as
small diffusers `ModelHook`s because `diffusers.hooks.apply_first_block_cache` breaks on SD3 (its last block
returns no text stream). The shared plumbing (cache context, generation resets, exact removal) is
`cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..engine.diffusers_cache import DiffusersCacheHandle, diffusers_blocks
from ..engine.stats import MethodStats, StepRecord
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_num, register


@register
@dataclass(frozen=True)
class FBCacheConfig(MethodConfig):
    """First-Block Cache. Default 0.08: the value ParaAttention's FLUX guide calls FLUX's default
    (`doc/fastest_flux.md`); its code passes 0.05 (below). `threshold=0` never skips: bit-exact.
    `warmup_steps`: leading steps never skipped (1: step 0 only, which has nothing cached to skip with; the
    authors' `warmup_steps=0` computes step 0 for the same reason).

    The authors' setting per architecture, `FBCacheConfig.authors(family, num_steps)` (chengzeyi/ParaAttention
    @58e476d, the last commit with per-model defaults; at HEAD 4de137c the threshold defaults to 0.0, off,
    unless passed). No SD3 and no PixArt adapter: MMDiT follows the FLUX adapter; PixArt the Wan adapter,
    the nearest: a DiT with cross-attention to the text and AdaLN from the timestep, as PixArt.

    | field | MMDiT (FLUX adapter) | PixArt (Wan adapter) |
    |---|---|---|
    | threshold | 0.05: `src/para_attn/first_block_cache/diffusers_adapters/flux.py` `apply_cache_on_pipe` (`residual_diff_threshold`) | 0.03: `diffusers_adapters/wan.py` `apply_cache_on_pipe` |
    | warmup_steps | 1: `first_block_cache/utils.py` `CacheContext.warmup_steps = 0` (step 0 computes: nothing cached) | 1 (the same) |

    Where ours still deviates: the threshold is model-specific, and the PixArt value is another model's
    (Wan's, a video model whose adapter also keeps separate caches for the two CFG halves).
    """

    name: ClassVar[str] = "fbcache"
    threshold: float = 0.08
    warmup_steps: int = 1

    def __post_init__(self):
        check(is_num(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0, self, "threshold",
              "a finite number >= 0")
        check_warmup(self)

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """ParaAttention's FLUX adapter on MMDiT, its Wan adapter on PixArt (see the class docstring)."""
        threshold = 0.05 if architecture(cls, family, num_steps) == "mmdit" else 0.03
        return {"threshold": threshold, "warmup_steps": 1}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["FBCacheConfig", "FBCacheConfig"]:
        return cls(threshold=0.0), cls(threshold=10.0)


@dataclass
class BlockSkipStats(MethodStats):
    """Steps "full" or "skipped" (the blocks after the first skipped); all transformer calls, the indices of the
    calls whose blocks were skipped, blocks computed and skipped."""

    transformer_calls: int = 0
    skipped_calls: list[int] = field(default_factory=list)
    blocks_computed: int = 0
    blocks_skipped: int = 0


class _FBCState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.head_residual = None  # block 0's residual at the last fully computed call
        self.head_output = None  # (hidden, encoder) after block 0 at that call
        self.tail_residual = None  # (hidden, encoder) residual of the remaining blocks at that call
        self.skip = False
        self.calls = 0  # calls of this cache context so far (its steps: one call per step and context)


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

        def __init__(self, state_manager, threshold: float, warmup_steps: int, counts):
            super().__init__()
            self.state_manager, self.threshold, self.counts = state_manager, threshold, counts
            self.warmup_steps = warmup_steps

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
            step, state.calls = state.calls, state.calls + 1
            state.skip = (step >= self.warmup_steps and state.tail_residual is not None
                          and self._relative_change(residual, state) < self.threshold)
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


class FBCacheHandle(DiffusersCacheHandle):
    """First-Block Cache as diffusers hooks: a head hook on the first block, pass-through-or-compute hooks on the
    others, the last one recording the residual of the remaining blocks."""

    hook_names = ("cat_fbc_head_block_hook", "cat_fbc_block_hook")

    def _register_hooks(self) -> None:
        from diffusers.hooks._helpers import TransformerBlockRegistry
        from diffusers.hooks.hooks import HookRegistry, StateManager

        blocks = diffusers_blocks(self.transformer)
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
            head_cls(manager, self.config.threshold, self.config.warmup_steps, counts), head_hook)
        for i, (_, block) in enumerate(blocks[1:], start=2):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                block_cls(manager, i == len(blocks), counts), block_hook)

    def _fresh_counts(self) -> dict:
        return {"skipped_calls": [], "blocks_computed": 0, "blocks_skipped": 0}

    def _after_call(self, context_name: str) -> None:
        if self._managers[0].get_state().skip:
            self._counts["skipped_calls"].append(self._counts["transformer_calls"] - 1)

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        skipped = self._counts["blocks_skipped"] > before["blocks_skipped"]
        return StepRecord(step, "skipped") if skipped else StepRecord(step, "full", tokens)

    @property
    def stats(self) -> "BlockSkipStats":
        """Transformer calls, the calls whose remaining blocks were skipped, blocks computed and skipped."""
        return BlockSkipStats(steps=list(self._steps), **self._counts)


FBCacheConfig.handle = FBCacheHandle
