"""The token engine applied to a model: CAT's processors, wrappers and step hook, driven by a timeline.

Methods whose config has a `timeline()` (cat, cat_fora, ras; CAT's policies, random tokens among them)
install this: the pruned attentions get the engine's processors (`cat/engine/processors/`), the image
feed-forwards and the norms in front of pruned modules get wrapper modules (`PrunedTokenwise`,
`RowsOnly`), and a `diffusers.hooks.ModelHook` on the transformer runs the timeline before and after
every call. The config's `prune_attention`, `prune_ff` and `cache_dtype` fields, when it has them, say
what is pruned and how the caches are stored.
"""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from ..families import ATTENTION, FEED_FORWARD, JOINT, family_for
from .clock import outside_schedule
from .handle import MethodHandle
from .patching import attach_hook, swap_in
from .processors import make_processor
from .runtime import ContextReceiver, Runtime
from .stats import GenerationStats
from .wrappers import PrunedTokenwise, RowsOnly

HOOK_NAME = "cat_pruning"


class TransformerHook(ModelHook):
    """Advances the step before each transformer call; after it, applies output caching and selects."""

    # Stateful only so that diffusers hands it the cache context; the state itself resets when a
    # generation starts (the clock), not when the pipeline ends, so statistics survive the call.
    _is_stateful = True

    def __init__(self, runtime: Runtime, family, scheduler=None):
        super().__init__()
        self.runtime = runtime
        self.context = ContextReceiver(runtime)
        self.family = family
        self.scheduler = scheduler
        self._suspended: tuple | None = None

    def pre_forward(self, module, *args, **kwargs):
        run = self.runtime
        if outside_schedule(kwargs):
            # run in full, outside the timeline, without touching the step counter or the caches
            state = run.state
            self._suspended = (state.index, state.record)
            state.index, state.record = None, False
            return args, kwargs
        run.clock.observe_call(module, args, kwargs)
        state = run.state
        if state.step < 0:
            state.grid = self.family.grid(module, args, kwargs)
            config = getattr(module, "config", None)
            state.channels = (getattr(config, "in_channels", None), getattr(config, "out_channels", None))
            state.num_steps = run.clock.num_steps(self.scheduler)
            text = kwargs.get("encoder_hidden_states")
            state.num_text = text.shape[1] if isinstance(text, torch.Tensor) and text.ndim == 3 else 0
        state.timestep = kwargs.get("timestep")
        run.timeline.begin_step(state, run.config, state.grid)
        return args, kwargs

    def reset_state(self, module):
        return module

    def post_forward(self, module, output):
        if self._suspended is not None:
            state = self.runtime.state
            state.index, state.record = self._suspended
            self._suspended = None
            return output
        state = self.runtime.state
        sample = output[0] if isinstance(output, tuple) else output.sample
        tokens = self.family.to_tokens(module, sample)  # [B, N, D]
        new_tokens = self.runtime.timeline.end_step(state, self.runtime.config, tokens)
        if new_tokens is tokens:
            return output
        sample = self.family.from_tokens(module, new_tokens, sample)
        if _shares_storage(sample, new_tokens):
            # The timeline's output buffer is updated in place at the next step, while the pipeline may
            # still hold this step's output (multistep schedulers keep earlier model outputs).
            sample = sample.clone()
        if isinstance(output, tuple):
            return (sample, *output[1:])
        output.sample = sample
        return output


class TokenHandle(MethodHandle):
    """A method applied through the token engine. `remove()` (or a `with` block) restores the model exactly."""

    cuda_graphs = True  # caches and index tensors: allocated outside the graphs, updated in place, static

    def __init__(self, target, config):
        super().__init__(target, config)
        self.label = type(config).__name__.removesuffix("Config")  # names the method in messages
        self.family = family_for(self.transformer, self.label)
        self.runtime = Runtime(config, self.clock)

    @property
    def stats(self) -> GenerationStats:
        """Per-step statistics of the current or last generation (CPU tensors)."""
        return self.runtime.last_state().stats()

    def cache_bytes(self) -> int:
        """Bytes held by the current or last generation (every cache context)."""
        return sum(state.cache_bytes() for state in self.runtime.states.values())

    def _new_generation(self) -> None:
        if hasattr(self, "runtime"):
            self.runtime.new_generation()

    def remove(self) -> None:
        super().remove()
        self.runtime.drop_buffers()

    def _runs_eagerly(self) -> bool:
        """A step that fills the caches runs its blocks eagerly under `compile`: the caches are allocated
        (or refilled) outside the compiled code, so no compiled block returns a tensor the engine keeps."""
        state = self.runtime.states.get(self.runtime.context)
        return state is not None and state.record

    def _install(self) -> None:
        transformer, config, run, family = self.transformer, self.config, self.runtime, self.family
        family.check(transformer, self.label)
        if getattr(config, "cache_dtype", None) is not None:
            check_cache_dtype(config.cache_dtype, family, _device_of(transformer))
        attentions = family.find(transformer, ATTENTION) if getattr(config, "prune_attention", True) else []
        tokenwise = family.find(transformer, FEED_FORWARD) if getattr(config, "prune_ff", True) else []
        pruned = {name for name, _ in attentions + tokenwise}
        norms = [(n, m, c) for n, m, c in family.row_norms(transformer) if set(c) <= pruned]
        run.gathered_inputs = frozenset(c for _, _, consumers in norms for c in consumers)
        for name, norm, _ in norms:
            swap_in(transformer, name, RowsOnly(norm, run, name), self._undo)
        for name, attn in attentions:
            original = attn.processor
            attn.set_processor(make_processor(family, attn, run, name, self.label))
            self._undo.append(lambda attn=attn, original=original: attn.set_processor(original))
        for name, ff in tokenwise:
            swap_in(transformer, name, PrunedTokenwise(ff, run, name), self._undo)
        if getattr(config, "prune_ff", True):
            for name, module in family.find(transformer, JOINT):
                swap_in(transformer, name, PrunedTokenwise(module, run, name, joint=True), self._undo)
        attach_hook(transformer, TransformerHook(run, family, getattr(self._pipe, "scheduler", None)), self._undo,
                    HOOK_NAME)
        self.clock.observe_pipeline(self._undo)


def check_cache_dtype(name: str | None, family, device) -> None:
    """Raises a named error for a cache dtype the family or device cannot store."""
    if name is None:
        return
    if not family.cache_dtypes:
        raise NotImplementedError(f"cache_dtype is not supported on {family.name} yet; leave it null")
    if name == "float8_e4m3fn":
        device = torch.device(device)
        ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        if not ok:
            raise ValueError(f"cache_dtype=float8_e4m3fn needs a CUDA device with fp8 support (compute capability "
                             f">= 8.9, e.g. L4, H100); this run is on {device}. Use bfloat16 or float16.")


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory (always assumed on `meta`, which has none to compare)."""
    if a.device.type == "meta" or b.device.type == "meta":
        return a.device == b.device
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
