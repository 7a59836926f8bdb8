"""What the handles built on diffusers' own cache hooks share (TaylorSeer, First-Block Cache, MagCache, DBCache,
TeaCache, Pyramid Attention Broadcast, FasterCache).

SD3Transformer2DModel and PixArtTransformer2DModel have no `CacheMixin` in diffusers 0.42, so their
pipelines never open a `cache_context`: the handle replaces the transformer's `forward` (an instance
attribute, removed again on `remove()`) by one that opens a context around every call (unless the
pipeline already did, as FLUX's does), counts the call, and lets the method look before and after it.
A new generation (the clock) resets the hooks' state. A call outside the schedule (SD3.5's
skip-layer-guidance call) keeps a cache state of its own.

Some diffusers hooks keep their state on the hook itself rather than in a `StateManager` (Pyramid Attention
Broadcast, FasterCache): they know no cache context, so the handle resets them at each generation and lets a
call outside the schedule bypass them (their `fn_ref.forward` points at the module's own forward for that call).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from ..families.base import family_of_class
from .clock import outside_schedule
from .handle import MethodHandle
from .stats import StepRecord, tensor_bytes

SKIP_LAYERS_CONTEXT = "skip_layers"
CONTEXT = "cond"  # the context the handle opens, and the one its step records follow (FLUX names its calls)


class DiffusersCacheHandle(MethodHandle):
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
        self._managers = list({id(m): m for _, hook in self._hooks
                               if (m := getattr(hook, "state_manager", None)) is not None}.values())
        # hooks holding their own state (no StateManager, no cache context): reset per generation, bypassed outside
        self._own_state = [(m, hook) for m, hook in self._hooks
                           if getattr(hook, "state_manager", None) is None and hook._is_stateful]
        self._invalidate_registry_cache()
        self._family = family_of_class(type(t).__name__)
        self._new_generation()
        self._wrap_forward()
        self.clock.observe_pipeline(self._undo)

    def cache_bytes(self) -> int:
        """Bytes of the tensors the hooks' states hold (every cache context)."""
        return tensor_bytes([list(m._state_cache.values()) for m in getattr(self, "_managers", [])],
                            [hook.state for _, hook in getattr(self, "_own_state", [])])

    # --- per-method parts
    def _register_hooks(self) -> None:
        raise NotImplementedError

    def _fresh_counts(self) -> dict:
        return {}

    def _before_call(self) -> None:
        """Runs with the cache context set, before the transformer computes."""

    def _after_call(self, context_name: str) -> None:
        """Runs with the cache context still set, after the transformer computed."""

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        """The record of a call of the schedule, from the counts `before` it and now."""
        return StepRecord(step, "full", tokens)

    # --- generation and context bookkeeping
    def _new_generation(self) -> None:
        for manager in getattr(self, "_managers", []):
            context = manager._context  # a context the pipeline opened (FLUX) survives the reset
            manager.reset()
            manager.set_context(context)
        for module, hook in getattr(self, "_own_state", []):
            hook.reset_state(module)
        self._counts: dict[str, Any] = {"transformer_calls": 0, **self._fresh_counts()}
        self._steps: list[StepRecord] = []
        self._tokens: int | None = None
        self._starting = True

    def _wrap_forward(self) -> None:
        t = self.transformer
        original = t.forward

        @functools.wraps(original)
        def forward(*args, **kwargs):
            outside = outside_schedule(kwargs)
            if not outside:
                self.clock.observe_call(t, args, kwargs)
                if self._tokens is None and self._family is not None:
                    h, w = self._family.grid(t, args, kwargs)
                    self._tokens = h * w
            from diffusers.hooks.hooks import CacheContext

            opened = [m for m in self._managers if m._context is None]
            for manager in opened:
                manager.set_context(CacheContext(SKIP_LAYERS_CONTEXT if outside else CONTEXT))
            bypassed = [hook.fn_ref for _, hook in self._own_state] if outside else []
            forwards = [fn_ref.forward for fn_ref in bypassed]
            for fn_ref in bypassed:
                fn_ref.forward = fn_ref.original_forward
            try:
                self._counts["transformer_calls"] += 1
                before = {k: v for k, v in self._counts.items() if isinstance(v, int)}
                self._call = (args, kwargs)
                self._before_call()
                self._starting = False
                output = original(*args, **kwargs)
                if self._managers:
                    context = self._managers[0].context.name
                else:
                    context = SKIP_LAYERS_CONTEXT if outside else CONTEXT
                self._after_call(context)
                if context == CONTEXT:
                    self._steps.append(self._step_record(len(self._steps), before, self._tokens))
            finally:
                for manager in opened:
                    manager.set_context(None)
                for fn_ref, forward in zip(bypassed, forwards):
                    fn_ref.forward = forward
            return output

        from .patching import set_instance_attr

        set_instance_attr(t, "forward", forward, self._undo)

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


def diffusers_blocks(transformer) -> list[tuple[str, torch.nn.Module]]:
    """The transformer blocks in call order: the family's block lists (`cat.families`), or, for a class no
    family describes, the lists diffusers' own block caches look for."""
    family = family_of_class(type(transformer).__name__)
    if family is not None:
        names = family.blocks
    else:
        from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS as names
    return [(f"{name}.{i}", block) for name, blocks in transformer.named_children()
            if name in names and isinstance(blocks, torch.nn.ModuleList)
            for i, block in enumerate(blocks)]
