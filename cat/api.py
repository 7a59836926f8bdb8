"""`cat.apply`: patch a diffusers pipeline or transformer in place; `handle.remove()` undoes it exactly."""

from __future__ import annotations

import torch

from .engine.handle import MethodHandle, check_compile, check_cuda_graphs, compile_blocks
from .methods import METHODS, MethodConfig
from .methods.cat import CATConfig


def apply(pipe_or_transformer, config: MethodConfig | None = None, compile: bool = False,
          compile_mode: str = "default") -> MethodHandle:
    """Applies a method to a diffusers pipeline (anything with a `.transformer`) or its transformer, in place.

    `config` is any method's config (`cat.CATConfig()` by default; `cat.METHODS` lists them all); the
    call dispatches on its type to the handle class it names. Returns the handle: `handle.remove()` or
    leaving `with cat.apply(...)` restores the model exactly. Raises if a method (any of them) is already
    applied to the transformer (methods do not stack), or if the transformer's class is not supported.
    `compile=True` compiles the transformer's blocks after the method is applied (`compile_mode`:
    default, max-autotune, or reduce-overhead for CUDA graphs); `remove()` undoes that too.
    """
    config = CATConfig() if config is None else config
    if not isinstance(config, MethodConfig) or type(config).handle is None:
        known = ", ".join(f"{n} ({c.__name__})" for n, c in sorted(METHODS.items()))
        raise TypeError(f"cat.apply needs a method config; got {type(config).__name__}. Known: {known}")
    if not isinstance(pipe_or_transformer, torch.nn.Module) and not hasattr(pipe_or_transformer, "transformer"):
        raise TypeError(
            f"cat.apply expects a diffusers pipeline with a `transformer` or a transformer module, "
            f"got {type(pipe_or_transformer).__name__}"
        )
    if compile:
        transformer = pipe_or_transformer if isinstance(pipe_or_transformer, torch.nn.Module) else \
            pipe_or_transformer.transformer
        check_cuda_graphs(type(config).handle, config, compile_mode)
        check_compile(compile_mode, next(transformer.parameters()).device)
    handle = type(config).handle(pipe_or_transformer, config).install()
    if compile:
        try:
            handle.compile(compile_mode)
        except Exception:
            handle.remove()
            raise
    return handle


__all__ = ["apply", "check_compile", "check_cuda_graphs", "compile_blocks"]
