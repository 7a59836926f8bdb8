"""Latency and memory, always as ratios against the full model measured in the same run.

End to end (a whole pipeline call) and the denoising loop only (the sum of transformer calls), each
after warm-up runs, over repeated timed runs with device synchronisation; median and spread.
`compile=True` compiles the transformer's blocks (`torch.compile`, `compile_mode`): the full model's
blocks for its timing, then, after that compilation is undone, the method's (applied first, then
compiled, so its hooks and processors are inside the graphs).
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

import cat


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class _TransformerTimer:
    """Sums the wall-clock time of the transformer's calls (the denoising loop's compute)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device, self.total, self._start = device, 0.0, 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        _sync(self.device)
        self._start = time.perf_counter()

    def _post(self, *_):
        _sync(self.device)
        self.total += time.perf_counter() - self._start

    def remove(self):
        for h in self._handles:
            h.remove()


def time_pipeline(call, pipe, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median and spread of end-to-end and denoising time of `call()` (which runs `pipe`)."""
    for _ in range(warmup):
        call()
    end_to_end, denoise = [], []
    for _ in range(repeats):
        timer = _TransformerTimer(pipe.transformer, device)
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        end_to_end.append(time.perf_counter() - start)
        denoise.append(timer.total)
        timer.remove()
    spread = lambda xs: (max(xs) - min(xs)) if len(xs) > 1 else 0.0  # noqa: E731
    return {"median_s": statistics.median(end_to_end), "spread_s": spread(end_to_end),
            "denoise_median_s": statistics.median(denoise), "denoise_spread_s": spread(denoise)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def compiled_blocks(transformer, enabled: bool, mode: str = "default"):
    """A context in which the transformer's blocks are compiled (nothing when not enabled)."""
    import contextlib

    from cat.methods.base import check_compile, compile_blocks

    @contextlib.contextmanager
    def ctx():
        if not enabled:
            yield
            return
        check_compile(mode, next(transformer.parameters()).device)
        undo = compile_blocks(transformer, mode)  # the same blocks, compiled the same way, as the method's
        try:
            yield
        finally:
            for fn in reversed(undo):
                fn()

    return ctx()


def compare(pipe, call, method: cat.MethodConfig | None, device: torch.device, warmup: int = 1, repeats: int = 3,
            compile: bool = False, compile_mode: str = "default") -> dict:
    """Full model and method timed in the same run; returns flat metrics with their ratios.

    `call(**overrides)` runs the pipeline; the method's call overrides (e.g. fewer steps) are passed.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with compiled_blocks(pipe.transformer, compile, compile_mode):
        full = time_pipeline(call, pipe, device, warmup, repeats)
    full_mem = peak_memory_mb(device)
    out = {"latency_full_s": full["median_s"], "latency_full_spread_s": full["spread_s"],
           "denoise_full_s": full["denoise_median_s"], "peak_memory_full_mb": full_mem}
    if method is None:
        return out
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with cat.apply(pipe, method, compile=compile, compile_mode=compile_mode) as handle:
        overrides = handle.call_overrides()
        timed = time_pipeline(lambda: call(**overrides), pipe, device, warmup, repeats)
    mem = peak_memory_mb(device)
    out.update({"latency_s": timed["median_s"], "latency_spread_s": timed["spread_s"],
                "denoise_s": timed["denoise_median_s"], "peak_memory_mb": mem,
                "speedup": full["median_s"] / timed["median_s"],
                "denoise_speedup": full["denoise_median_s"] / max(timed["denoise_median_s"], 1e-9),
                "latency_repeats": repeats, "latency_compiled": int(compile)})
    return out
