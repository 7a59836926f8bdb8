"""Model-agnostic plumbing: the transformer hook, the feed-forward wrapper and the model-family registry.

A family adapter is data (`FamilySpec`): where the blocks, attentions and feed-forwards are, how to
read the token grid from the input and how to turn the output into tokens and back. The hook and
modules here only call the timeline and apply its plan.

Compiled blocks: everything a block reaches while it runs is the same expression in every block
(`processor.caches[runtime.context]`, a wrapper class's `forward`), so torch.compile traces one graph
per step kind and reuses it for every block of the same structure. Per-layer Python values that
dynamo guards on (a per-instance `forward` object as diffusers' `HookRegistry` installs, a cache
looked up by layer name) would give each block graphs of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..state import GenerationState, LayerCache

HOOK_NAME = "cat_pruning"


@dataclass(frozen=True)
class FamilySpec:
    """What CAT needs to know about one family of diffusers transformers.

    Attributes:
        name: family name used in messages.
        transformer_classes: names of the diffusers transformer classes of the family.
        attention_modules: (transformer) -> [(qualified name, Attention)] whose processor CAT swaps.
        make_processor: (original processor, runtime, name) -> the CAT attention processor.
        feed_forward_modules: (transformer) -> [(qualified name, module)] of the image stream.
        grid: (transformer, args, kwargs) -> (h, w) token grid of this call's input.
        to_tokens: (transformer, output sample) -> [B, N, D] output tokens.
        from_tokens: (transformer, tokens, output sample) -> output sample.
        check: (transformer) -> None, raises on a configuration CAT cannot handle.
        joint_modules: (transformer) -> [(qualified name, module)] of token-wise modules whose input is
            a [text, image] sequence (only the image rows are pruned).
        row_norms: (transformer) -> [(qualified name, norm, consumers)]: token-wise norms of the image
            stream whose output reaches only the pruned modules `consumers` (qualified names, through
            per-sample modulation at most). While all of them are pruned, a pruned step normalises the
            selected tokens only and the consumers take those rows as they are.
    """

    name: str
    transformer_classes: tuple[str, ...]
    attention_modules: Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]]
    make_processor: Callable[[Any, "Runtime", str], Any]
    feed_forward_modules: Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]]
    grid: Callable[[torch.nn.Module, tuple, dict], tuple[int, int]]
    to_tokens: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    from_tokens: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    check: Callable[[torch.nn.Module], None] = lambda transformer: None
    joint_modules: Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]] = lambda transformer: []
    row_norms: Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module, tuple[str, ...]]]] = (
        lambda transformer: []
    )


_REGISTRY: dict[str, FamilySpec] = {}


def submodules(blocks: str, *names: str) -> Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]]:
    """(transformer) -> [(qualified name, module)] of the named submodules present in each block."""

    def find(transformer):
        return [
            (f"{blocks}.{i}.{name}", getattr(block, name))
            for i, block in enumerate(getattr(transformer, blocks))
            for name in names
            if getattr(block, name, None) is not None
        ]

    return find


def processor_factory(expected: type, cat_processor: type, family: str, hint: str) -> Callable:
    """make_processor for a family whose attentions must use diffusers' default processor `expected`."""

    def make(original, runtime, name):
        if type(original) is not expected:
            raise TypeError(
                f"CAT on {family} needs the default {expected.__name__} at {name}, found "
                f"{type(original).__name__}; {hint}"
            )
        return cat_processor(original, runtime, name)

    return make


def check_no_chunking(transformer: torch.nn.Module) -> None:
    """Feed-forward chunking calls `ff` once per chunk, which CAT's row selection cannot follow."""
    for i, block in enumerate(transformer.transformer_blocks):
        if getattr(block, "_chunk_size", None) is not None:
            raise ValueError(
                f"CAT cannot prune transformer_blocks.{i}.ff with feed-forward chunking enabled; "
                "call transformer.disable_forward_chunking() first."
            )


def register(spec: FamilySpec) -> FamilySpec:
    for cls in spec.transformer_classes:
        _REGISTRY[cls] = spec
    return spec


def supported_models() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def spec_for(transformer: torch.nn.Module) -> FamilySpec:
    for cls in type(transformer).__mro__:
        if cls.__name__ in _REGISTRY:
            return _REGISTRY[cls.__name__]
    raise TypeError(
        f"CAT does not support {type(transformer).__name__}; supported transformer classes: "
        f"{', '.join(supported_models())}."
    )


class Runtime:
    """What every hook of one applied handle shares: the config, its timeline and the generation state.

    The timeline (`config.timeline()`: CAT's `cat.timeline`, or a peer's) decides per step which tokens
    run (`state.plan`) and whether the caches are filled (`state.record`); the hooks only apply that.

    Pipelines that call the transformer more than once per step (FLUX's true CFG) name each call
    with diffusers' `cache_context`; every named call then has a state of its own.
    """

    def __init__(self, config):
        self.config = config
        self.timeline = config.timeline()
        self.cfg_pairs = False
        self.guidance_scale: float | None = None  # the pipeline's, when it tells us (read by peers' timelines)
        self.context: str | None = None
        self.states: dict[str | None, GenerationState] = {}
        self.last_timestep: float | None = None
        self.layers: dict[str, dict[str | None, LayerCache]] = {}
        self.gathered_inputs: frozenset[str] = frozenset()  # modules fed the selected rows (see RowsOnly)

    def layer_caches(self, name: str) -> dict[str | None, LayerCache]:
        """The caches of module `name`, one `LayerCache` per cache context, for the module to hold.

        The module reads its cache as `caches[runtime.context]`, the same expression in every block;
        each generation state lists the same objects by name in `state.caches`. They are emptied when
        a generation starts.
        """
        return self.layers.setdefault(name, {})

    @property
    def state(self) -> GenerationState:
        state = self.states.get(self.context)
        if state is None:
            state = GenerationState(cfg_pairs=self.cfg_pairs, guidance_scale=self.guidance_scale)
            for name, per_context in self.layers.items():
                state.caches[name] = per_context[self.context] = LayerCache()
            self.states[self.context] = state
        return state

    def last_state(self) -> GenerationState:
        """The state to report: the conditional call's when calls are named."""
        for key in (None, "cond"):
            if key in self.states:
                return self.states[key]
        return next(iter(self.states.values()), GenerationState(cfg_pairs=self.cfg_pairs))

    def new_generation(self, cfg_pairs: bool) -> None:
        self.cfg_pairs = cfg_pairs
        self.states = {}
        for per_context in self.layers.values():
            per_context.clear()
        self.last_timestep = None


class _ContextReceiver(StateManager):
    """Receives diffusers' cache context (`transformer.cache_context(name)`) and tells the runtime."""

    def __init__(self, runtime: Runtime):
        super().__init__(BaseState)
        self.runtime = runtime

    def set_context(self, context) -> None:
        self.runtime.context = None if context is None else context.name


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of the selected tokens.  [B, N, *row], [B, K] -> [B, K, *row]"""
    b, n = x.shape[:2]
    flat = x.reshape(b * n, -1) if n else x.reshape(0, int(torch.tensor(x.shape[2:]).prod()))
    rows = flat.index_select(0, _flat(index, n))  # [B*K, row]
    return rows.view(b, index.shape[1], *x.shape[2:])


def joint_rows(plan: torch.Tensor, num_text: int) -> torch.Tensor:
    """Rows of a [text, image] sequence: every text token, then the selected image tokens.  [B, K] -> [B, T+K]"""
    text = torch.arange(num_text, device=plan.device).expand(plan.shape[0], num_text)
    return torch.cat([text, plan + num_text], dim=1)


def scatter_tokens_(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Writes the selected tokens' rows in place and returns `target`.  [B, N, *row] <- [B, K, *row]

    One `index_put_` on the buffer itself (whole rows, no view of it): torch.compile then updates the
    buffer in place, where an `index_copy_` into a flattened view made it copy the whole buffer out and
    back at every pruned step.
    """
    batch = torch.arange(target.shape[0], device=index.device)[:, None]  # [B, 1]
    return target.index_put_((batch, index), rows)


def scatter_heads_(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The same for per-head tensors.  [B, H, N, d] <- [B, H, K, d] at token indices [B, K]"""
    b, h = target.shape[:2]
    batch = torch.arange(b, device=index.device)[:, None, None]  # [B, 1, 1]
    heads = torch.arange(h, device=index.device)[None, :, None]  # [1, H, 1]
    return target.index_put_((batch, heads, index[:, None, :]), rows)


CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float8_e4m3fn": torch.float8_e4m3fn}


def cache_dtype(runtime: "Runtime", kind: str) -> torch.dtype | None:
    """The dtype caches of `kind` ("kv" or "out") are stored in (None: the compute dtype). fp8 applies to
    keys and values only; module outputs then use bfloat16."""
    name = getattr(runtime.config, "cache_dtype", None)
    if name is None:
        return None
    if name == "float8_e4m3fn" and kind == "out":
        return torch.bfloat16
    return CACHE_DTYPES[name]


def store(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A contiguous cache copy of `t` in `dtype` (the tensor itself when no conversion is needed)."""
    return t.contiguous() if dtype is None or dtype == t.dtype else t.to(dtype).contiguous()


def update_heads(cache_t: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Writes fresh per-head rows into a cache (converting to its dtype) and returns the full tensor in
    the rows' dtype (the cache itself when the dtypes agree)."""
    scatter_heads_(cache_t, index, rows.to(cache_t.dtype))
    return cache_t if cache_t.dtype == rows.dtype else cache_t.to(rows.dtype)


def update_tokens(cache_t: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The same for [B, N, *row] caches."""
    scatter_tokens_(cache_t, index, rows.to(cache_t.dtype))
    return cache_t if cache_t.dtype == rows.dtype else cache_t.to(rows.dtype)


def _flat(index: torch.Tensor, n: int) -> torch.Tensor:
    """Row numbers in a flattened [B*N] batch.  [B, K] -> [B*K]"""
    return (index + torch.arange(index.shape[0], device=index.device)[:, None] * n).reshape(-1)


class TransformerHook(ModelHook):
    """Advances the step before each transformer call; after it, applies output caching and selects."""

    # Stateful only so that diffusers hands it the cache context; the state itself resets when a
    # pipeline call starts (see CATHandle), not when the pipeline ends, so statistics survive the call.
    _is_stateful = True

    def __init__(self, runtime: Runtime, spec: FamilySpec, scheduler=None, timestep_arg: str = "timestep"):
        super().__init__()
        self.runtime = runtime
        self.context = _ContextReceiver(runtime)
        self.spec = spec
        self.scheduler = scheduler
        self.timestep_arg = timestep_arg
        self._suspended: tuple | None = None

    def pre_forward(self, module, *args, **kwargs):
        run = self.runtime
        if kwargs.get("skip_layers"):
            # SD3.5's skip-layer guidance adds a call with some blocks skipped: run it in full, outside
            # the timeline, without touching the step counter or the caches.
            state = run.state
            self._suspended = (state.plan, state.record)
            state.plan, state.record = None, False
            return args, kwargs
        if self.scheduler is None:
            self._reset_on_new_schedule(kwargs.get(self.timestep_arg))
        state = run.state
        if state.step < 0:
            state.grid = self.spec.grid(module, args, kwargs)
            config = getattr(module, "config", None)
            state.channels = (getattr(config, "in_channels", None), getattr(config, "out_channels", None))
            if self.scheduler is not None:
                state.num_steps = len(self.scheduler.timesteps)
        run.timeline.begin_step(state, run.config, state.grid)
        return args, kwargs

    def reset_state(self, module):
        return module

    def post_forward(self, module, output):
        if self._suspended is not None:
            state = self.runtime.state
            state.plan, state.record = self._suspended
            self._suspended = None
            return output
        state = self.runtime.state
        sample = output[0] if isinstance(output, tuple) else output.sample
        tokens = self.spec.to_tokens(module, sample)  # [B, N, D]
        new_tokens = self.runtime.timeline.end_step(state, self.runtime.config, tokens)
        if new_tokens is tokens:
            return output
        sample = self.spec.from_tokens(module, new_tokens, sample)
        if _shares_storage(sample, new_tokens):
            # The timeline's output buffer is updated in place at the next step, while the pipeline may
            # still hold this step's output (multistep schedulers keep earlier model outputs).
            sample = sample.clone()
        if isinstance(output, tuple):
            return (sample, *output[1:])
        output.sample = sample
        return output

    def _reset_on_new_schedule(self, timestep) -> None:
        """Transformer-only use: a timestep above the previous one starts a new generation."""
        if not isinstance(timestep, torch.Tensor) or timestep.device.type == "meta":
            return
        t = float(timestep.flatten()[0])
        run = self.runtime
        if run.last_timestep is not None and t > run.last_timestep:
            run.new_generation(run.cfg_pairs)
        run.last_timestep = t


class PrunedTokenwise(torch.nn.Module):
    """Stands in for a token-wise module (a block's feed-forward, FLUX's single-stream projections) while
    CAT is applied: runs it on the selected tokens only; the others reuse their cached output.

    With `joint=True` the module's input is a [text, image] sequence (FLUX single-stream blocks): the
    text rows always run, the image rows only where selected.

    The wrapped module stays a registered child (`module`), so it moves with the model's `.to()`;
    `swap_in` puts the wrapper in its place and records the exact inverse. A wrapper class rather than a
    diffusers hook because the hook registry gives every hooked module a `forward` object of its own,
    which torch.compile guards by identity: each block would then compile graphs of its own.
    """

    def __init__(self, module: torch.nn.Module, runtime: Runtime, name: str, joint: bool = False):
        super().__init__()
        self.module = module
        self.runtime = runtime
        self.name = name
        self.joint = joint
        self.gathered = name in runtime.gathered_inputs  # a pruned step's input holds the selected rows only
        self.caches = runtime.layer_caches(name)

    def forward(self, hidden_states, *args, **kwargs):
        run = self.runtime
        state: GenerationState = run.state
        if state.plan is None:
            out = self.module(hidden_states, *args, **kwargs)
            if state.record:
                self.caches[run.context].out = store(out, cache_dtype(run, "out"))
            return out
        cache = self.caches[run.context]
        index = state.plan
        if self.joint:
            index = joint_rows(index, hidden_states.shape[1] - state.grid[0] * state.grid[1])  # [B, T+K]
        x = hidden_states if self.gathered else gather_tokens(hidden_states, index)  # [B, K, C]
        rows = self.module(x, *args, **kwargs)  # [B, K, C]
        return update_tokens(cache.out, index, rows)  # [B, N, C]

    def extra_repr(self) -> str:
        return f"name={self.name!r}" + (", joint=True" if self.joint else "")


class RowsOnly(torch.nn.Module):
    """Stands in for a token-wise norm whose output only the pruned modules read (a `FamilySpec.row_norms`
    entry): in a pruned step it normalises the selected image tokens only, instead of every token for
    the consumers to pick rows from. Per-row norms give those rows bit-identical values either way;
    the consumers know their input arrives gathered (`Runtime.gathered_inputs`). Full steps pass through.
    """

    def __init__(self, module: torch.nn.Module, runtime: Runtime, name: str):
        super().__init__()
        self.module = module
        self.runtime = runtime
        self.name = name

    def forward(self, hidden_states, *args, **kwargs):
        plan = self.runtime.state.plan
        if plan is not None:
            hidden_states = gather_tokens(hidden_states, plan)  # [B, K, C]
        return self.module(hidden_states, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def swap_in(root: torch.nn.Module, name: str, wrapper: torch.nn.Module, undo: list) -> None:
    """Replaces the submodule `name` of `root` by `wrapper` and appends the exact inverse to `undo`."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    original = parent._modules[attr]
    setattr(parent, attr, wrapper)
    undo.append(lambda: setattr(parent, attr, original))


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory (always assumed on `meta`, which has none to compare)."""
    if a.device.type == "meta" or b.device.type == "meta":
        return a.device == b.device
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def attach_hook(module: torch.nn.Module, hook: ModelHook, undo: list, name: str = HOOK_NAME) -> None:
    """Registers `hook` under `name` and appends its exact inverse to `undo` (the module's attributes as before)."""
    had_registry = hasattr(module, "_diffusers_hook")
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)

    def detach():
        registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            if not had_forward:
                module.__dict__.pop("forward", None)
            if not had_registry:
                del module._diffusers_hook

    undo.append(detach)


def has_hook(module: torch.nn.Module, name: str = HOOK_NAME) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(name) is not None


def observe_encode_prompt(pipe, on_new_generation: Callable[[bool], None], undo: list) -> None:
    """A pipeline call starts by encoding its prompt: call `on_new_generation(cfg)` there, with the
    pipeline's own `do_classifier_free_guidance` argument (whether the batch is [uncond..., cond...]).
    Appends the exact inverse to `undo`."""
    import functools
    import inspect

    encode = pipe.encode_prompt
    signature = inspect.signature(encode)

    @functools.wraps(encode)
    def encode_prompt(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        on_new_generation(bool(bound.arguments.get("do_classifier_free_guidance", False)))
        return encode(*args, **kwargs)

    set_instance_attr(pipe, "encode_prompt", encode_prompt, undo)


def set_instance_attr(obj, name: str, value, undo: list) -> None:
    """Sets `obj.<name>` on the instance and appends the exact inverse to `undo`: the instance's own
    earlier value put back, or the attribute removed so the class's shows through again."""
    had_attr, before = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, value)

    def restore():
        if had_attr:
            setattr(obj, name, before)
        else:
            delattr(obj, name)

    undo.append(restore)
