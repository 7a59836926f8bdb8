"""`cat.apply`: patch a diffusers pipeline or transformer in place; `handle.remove()` undoes it exactly."""

from __future__ import annotations

import functools

import torch

from .adapters import Runtime, spec_for
from .adapters.base import PrunedTokenwise, RowsOnly, TransformerHook, attach_hook, observe_encode_prompt, swap_in
from .config import CATConfig
from .methods.base import METHODS, MethodHandle, register
from .methods.base import apply as _dispatch
from .state import GenerationStats


class CATHandle(MethodHandle):
    """An applied CAT patch (or any method that runs on CAT's token machinery: a config whose
    `timeline()` drives the same hooks). `remove()` (or a `with` block) restores the model exactly."""

    def __init__(self, target, config: CATConfig):
        super().__init__(target, config)
        self.spec = spec_for(self.transformer)
        self._runtime = Runtime(config)

    @property
    def stats(self) -> GenerationStats:
        """Per-step statistics of the current or last generation (CPU tensors)."""
        return self._runtime.last_state().stats()

    def cache_bytes(self) -> int:
        """Bytes held by the caches of the current or last generation (every cache context)."""
        return sum(state.cache_bytes() for state in self._runtime.states.values())

    def reset(self, cfg_pairs: bool | None = None) -> None:
        """Starts a new generation. Pipelines do this by themselves; for a bare transformer, say whether
        its batch is [uncond..., cond...] CFG pairs (which then share one selection per prompt)."""
        self._runtime.new_generation(self._runtime.cfg_pairs if cfg_pairs is None else cfg_pairs)

    def remove(self) -> None:
        """Restores every patched module and the pipeline exactly as they were."""
        while self._undo:
            self._undo.pop()()
        self._runtime.new_generation(False)  # drop the caches

    def _install(self) -> None:
        transformer, config, run = self.transformer, self.config, self._runtime
        self.spec.check(transformer)
        check_cache_dtype(getattr(config, "cache_dtype", None), transformer, self.spec.name)
        try:
            attentions = self.spec.attention_modules(transformer) if getattr(config, "prune_attention", True) else []
            tokenwise = self.spec.feed_forward_modules(transformer) if getattr(config, "prune_ff", True) else []
            pruned = {name for name, _ in attentions + tokenwise}
            norms = [(n, m, c) for n, m, c in self.spec.row_norms(transformer) if set(c) <= pruned]
            run.gathered_inputs = frozenset(c for _, _, consumers in norms for c in consumers)
            for name, norm, _ in norms:
                swap_in(transformer, name, RowsOnly(norm, run, name), self._undo)
            for name, attn in attentions:
                original = attn.processor
                attn.set_processor(self.spec.make_processor(original, run, name))
                self._undo.append(functools.partial(attn.set_processor, original))
            for name, ff in tokenwise:
                swap_in(transformer, name, PrunedTokenwise(ff, run, name), self._undo)
            if getattr(config, "prune_ff", True):
                for name, module in self.spec.joint_modules(transformer):
                    swap_in(transformer, name, PrunedTokenwise(module, run, name, joint=True), self._undo)
            scheduler = getattr(self._pipe, "scheduler", None)
            attach_hook(transformer, TransformerHook(run, self.spec, scheduler), self._undo)
            if self._pipe is not None:
                self._observe_encode_prompt()
        except Exception:
            self.remove()
            raise

    def _observe_encode_prompt(self) -> None:
        """A pipeline call starts by encoding its prompt: start a new generation there, and learn from
        the pipeline's own argument whether the batch holds CFG pairs (and its guidance scale)."""
        pipe, run = self._pipe, self._runtime

        def new_generation(cfg_pairs: bool) -> None:
            run.guidance_scale = getattr(pipe, "_guidance_scale", None)
            run.new_generation(cfg_pairs)

        observe_encode_prompt(pipe, new_generation, self._undo)


def check_cache_dtype(name: str | None, transformer=None, family: str | None = None, device=None) -> None:
    """Raises a named error for a cache dtype the family or device cannot store."""
    if name is None:
        return
    if family == "flux":
        raise NotImplementedError("cache_dtype is not supported on FLUX yet; leave it null")
    if name == "float8_e4m3fn":
        device = torch.device(device) if device is not None else next(transformer.parameters()).device
        ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        if not ok:
            raise ValueError(f"cache_dtype=float8_e4m3fn needs a CUDA device with fp8 support (compute capability "
                             f">= 8.9, e.g. L4, H100); this run is on {device}. Use bfloat16 or float16.")


CATConfig.handle = CATHandle
register(CATConfig)


def apply(pipe_or_transformer, config=None, compile: bool = False, compile_mode: str = "default") -> MethodHandle:
    """Applies a method to a diffusers pipeline (anything with a `.transformer`) or its transformer, in place.

    `config` is any method's config (`cat.CATConfig()` by default; `cat.METHODS` lists them all); the
    call dispatches on its type. Returns the handle: `handle.remove()` or leaving
    `with cat.apply(...)` restores the model exactly. Raises if a method (any of them) is already applied
    to the transformer (methods do not stack), or if the transformer's class is not supported.
    `compile=True` compiles the transformer's blocks after the method is applied (`compile_mode`: default, max-autotune, or reduce-overhead for
    CUDA graphs); `remove()` undoes that too.
    """
    config = CATConfig() if config is None else config
    return _dispatch(pipe_or_transformer, config, compile=compile, compile_mode=compile_mode)


__all__ = ["CATHandle", "METHODS", "apply"]
