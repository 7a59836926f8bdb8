"""The handle every method's handle extends: exact undo, the generation clock, statistics, compilation.

A method's handle implements `_install` (patches the model, appending the exact inverse of every change to
`self._undo`) and, when it keeps state per generation, `_new_generation` (its clock calls it). It reports
`stats` (a `MethodStats`) and `cache_bytes()`. `remove()` undoes every change newest first, global
settings included (torch.compile's recompile limits).

CUDA graphs (`compile_mode="reduce-overhead"`) replay each compiled block on fixed addresses, in a
memory pool whose outputs the next replay overwrites: a method is graph-safe (`cuda_graphs = True`)
when no compiled block hands out a tensor the method keeps across calls, and every tensor it keeps is
allocated outside the graphs and updated in place at a fixed address (the token engine; the
fewer-steps method, which keeps nothing). The others are refused under that mode before anything changes.
"""

from __future__ import annotations

import torch

from ..families import family_of_class
from .clock import GenerationClock
from .stats import MethodStats

COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
APPLIED = "_cat_method"  # the transformer attribute holding the handle applied to it (one at a time)


class MethodHandle:
    """An applied method. `remove()` (or leaving a `with` block) restores the model exactly."""

    cuda_graphs = False  # whether compile_mode="reduce-overhead" (CUDA graphs) is safe (module docstring)

    def __init__(self, target, config):
        self.config = config
        self._pipe = None if isinstance(target, torch.nn.Module) else target
        self.transformer = target if self._pipe is None else target.transformer
        self._undo: list = []
        self.clock = GenerationClock(self._pipe, self._new_generation, config.check_steps)

    @property
    def active(self) -> bool:
        return bool(self._undo)

    @property
    def stats(self) -> MethodStats:
        """Per-step statistics of the current or last generation (a method adds its own fields)."""
        return MethodStats()

    def cache_bytes(self) -> int:
        """Bytes held by the method's caches for the current or last generation."""
        return 0

    def call_overrides(self, reference_steps: int | None = None) -> dict:
        """Pipeline call arguments the method changes (`steps`: `num_inference_steps`); most change none.

        `reference_steps`: the step count of the full-model run the method's images are compared with
        (what this call would run without the method). When given, the settings that depend on it are
        checked (`config.check_steps`, as the harness does before loading a model): a `StepsConfig`
        asking for more steps than the reference raises here.
        """
        if reference_steps is not None:
            if not isinstance(reference_steps, int) or isinstance(reference_steps, bool) or reference_steps < 1:
                raise ValueError(f"reference_steps={reference_steps!r} is invalid: reference_steps must be an "
                                 "integer >= 1.")
            self.config.check_steps(reference_steps)
        return self.config.call_overrides(reference_steps)

    def reset(self, *, cfg_pairs: bool | None = None, num_steps: int | None = None) -> None:
        """Starts a new generation. Pipelines do this by themselves; for a bare transformer, say whether its
        batch is [uncond..., cond...] CFG pairs and, for schedules that depend on it, the number of
        denoising steps (kept for later generations)."""
        self.clock.new_generation(cfg_pairs, num_steps)

    def remove(self) -> None:
        """Undoes every change, newest first, and drops what the last generation left."""
        while self._undo:
            self._undo.pop()()
        self.clock.new_generation(False)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _install(self) -> None:
        raise NotImplementedError

    def _new_generation(self) -> None:
        """Called by the clock when a generation starts: drop the previous one's state."""

    def _runs_eagerly(self) -> bool:
        """Whether the current transformer call runs its blocks eagerly although they are compiled."""
        return False

    def compile(self, mode: str = "default", fullgraph: bool = False, backend="inductor") -> "MethodHandle":
        """Compiles the transformer's repeated blocks in place with `torch.compile` (after the method is
        applied, so its hooks and processors are traced into the blocks' graphs; the per-step timeline
        on the transformer stays eager, outside the graphs). `remove()` undoes it too."""
        check_cuda_graphs(type(self), self.config, mode)
        if backend == "inductor":
            check_compile(mode, _device_of(self.transformer))
        self._undo.extend(compile_blocks(self.transformer, mode, fullgraph, backend, eager=self._runs_eagerly))
        return self

    def install(self) -> "MethodHandle":
        """Patches the model (`_install`), after recording this handle on the transformer. Methods do not
        stack: each patches the same modules on its own terms (CAT's processors and FORA's hooks, say),
        so a transformer that already carries a method is refused before anything changes."""
        t = self.transformer
        applied = vars(t).get(APPLIED)
        if applied is not None:
            raise RuntimeError(
                f"cat.apply: {_describe(applied.config)} is already applied to this {type(t).__name__}, so "
                f"{_describe(self.config)} is refused (methods do not stack). Call remove() on the handle "
                f"cat.apply returned for {applied.config.name!r} (or leave its `with` block) first."
            )
        setattr(t, APPLIED, self)
        self._undo.append(lambda: delattr(t, APPLIED))
        try:
            self._install()
        except Exception:
            self.remove()
            raise
        return self


def _describe(config) -> str:
    return f"{config.name!r} ({type(config).__name__})"


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's stacked blocks whose structure repeats (what `torch.compile` compiles once and
    reuses for every block of that structure).

    Blocks of the same class can differ: SD3's last block has no text output (`context_pre_only`, other
    norms, no `ff_context`), SD3.5-medium's first blocks have a second attention. dynamo compiles one set
    of graphs per structure; a structure only one block has (SD3's last block) would cost as many
    graphs as all the others for one block, so that block stays eager. When no structure repeats
    (a one- or two-block test model) every block is compiled.
    """
    family = family_of_class(type(transformer).__name__)
    blocks = []
    for name in family.blocks if family else ("transformer_blocks", "single_transformer_blocks"):
        blocks.extend(getattr(transformer, name, None) or [])
    if not blocks:
        raise TypeError(f"{type(transformer).__name__} has no transformer_blocks to compile")
    shapes = [_structure(block) for block in blocks]
    return [block for block, shape in zip(blocks, shapes) if shapes.count(shape) > 1] or blocks


def _structure(block: torch.nn.Module) -> tuple:
    return tuple((name, type(m)) for name, m in block.named_modules())


def compile_blocks(transformer: torch.nn.Module, mode: str = "default", fullgraph: bool = False,
                   backend="inductor", eager=None) -> list:
    """Compiles `repeated_blocks(transformer)` in place; returns the callables that undo it (the blocks,
    dynamo's process-wide recompile limits, which a many-block model raises, as they were, and the step
    marker below).

    Every block call makes its tensor arguments contiguous first, outside the compiled code: dynamo
    guards on strides, and PixArt's first block receives the patch embedding as a transposed view,
    which would give that block graphs of its own. A call for which `eager()` holds runs the block's own
    forward instead (a step that allocates the method's caches).

    Under `mode="reduce-overhead"` every transformer call first marks a new CUDA-graph step
    (`torch.compiler.cudagraph_mark_step_begin`): the blocks of one call then replay as one path of
    graphs, each block at its position with its own parameters and caches as static inputs, and a call
    may overwrite the graphs' outputs of the call before (the transformer's output comes from its eager
    output layers, never from a graph's pool).
    """
    blocks = repeated_blocks(transformer)
    # Blocks of one structure share their graphs (one per step kind); the limits only matter for
    # methods whose hooks still give each block guarded objects of its own (diffusers' hook registry:
    # FORA, ToCa): keep a 24- or 38-block model compiled instead of falling back to eager.
    config = torch._dynamo.config
    limits = {"recompile_limit": config.recompile_limit, "accumulated_recompile_limit": config.accumulated_recompile_limit}

    def restore_limits() -> None:  # process-wide settings: put back as they were
        for name, value in limits.items():
            setattr(config, name, value)

    undo = [restore_limits]
    config.recompile_limit = max(config.recompile_limit, 4 * len(blocks))
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * len(blocks))
    for block in blocks:
        before = vars(block).get("_compiled_call_impl", _ABSENT)
        block.compile(backend=backend, fullgraph=fullgraph, dynamic=False,
                      **({"mode": mode} if backend == "inductor" else {}))
        block._compiled_call_impl = _compiled_call(block, block._compiled_call_impl, eager)
        undo.append(lambda b=block, before=before: _restore_attr(b, "_compiled_call_impl", before))
    if mode == "reduce-overhead":
        marker = transformer.register_forward_pre_hook(lambda module, args: torch.compiler.cudagraph_mark_step_begin())
        undo.append(marker.remove)
    return undo


_ABSENT = object()


def _restore_attr(obj, name: str, value) -> None:
    if value is _ABSENT:
        vars(obj).pop(name, None)
    else:
        setattr(obj, name, value)


def _compiled_call(block: torch.nn.Module, compiled, eager):
    """The block's compiled call, its tensor arguments made contiguous (no copy when they already are);
    the block's own call when `eager()` holds."""

    def call(*args, **kwargs):
        if eager is not None and eager():
            return block._call_impl(*args, **kwargs)
        args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return compiled(*args, **kwargs)

    return call


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def check_cuda_graphs(handle_class: type, config, mode: str) -> None:
    """Refuses `compile_mode="reduce-overhead"` for a method that is not graph-safe (module docstring)."""
    if mode == "reduce-overhead" and not handle_class.cuda_graphs:
        raise ValueError(f"compile_mode='reduce-overhead' (CUDA graphs) is refused for {config.name!r}: its caches "
                         "are tensors that compiled blocks hand out and later calls read, which graph replays "
                         "overwrite; use compile_mode=default or max-autotune (CUDA graphs serve cat, cat_fora, "
                         "cat_budget, ras, steps and the full model)")


def check_compile(mode: str, device: torch.device | str | None = None) -> None:
    """Raises a named error for a compile mode this torch or device cannot run (before any model loads)."""
    import shutil

    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={mode!r} is invalid; allowed: {', '.join(COMPILE_MODES)}")
    if not torch._dynamo.is_dynamo_supported():
        raise RuntimeError("compile=true needs torch.compile, which this Python/torch build does not support")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise RuntimeError("compile=true on the CPU needs a C++ compiler (g++ or clang++) for torch.compile's "
                           "inductor backend; install one or set compile=false")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError("compile_mode='reduce-overhead' captures CUDA graphs and needs device=cuda; use "
                         "compile_mode=default on this device")
