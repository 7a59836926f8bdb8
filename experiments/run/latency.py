"""Latency and memory, always as ratios against the full model measured in the same run.

End to end (a whole pipeline call) and the denoising loop only (the sum of transformer calls), each
after warm-up runs, over repeated timed runs with device synchronisation, full model and method in
turns; median and spread, speedups as medians of paired ratios. `compile=True` compiles the
transformer's blocks (`torch.compile`, `compile_mode`): the full model's blocks for its calls, the
method's (applied first, then compiled, so its hooks and processors are inside the graphs) for its
calls, each compilation undone after its call.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time

import torch

import cat

from .pipelines import compiled_blocks

log = logging.getLogger(__name__)


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
    return summarise(end_to_end, denoise) if repeats else {}


def summarise(end_to_end: list[float], denoise: list[float]) -> dict:
    spread = lambda xs: (max(xs) - min(xs)) if len(xs) > 1 else 0.0  # noqa: E731
    return {"median_s": statistics.median(end_to_end), "spread_s": spread(end_to_end),
            "denoise_median_s": statistics.median(denoise), "denoise_spread_s": spread(denoise),
            "end_to_end_s": end_to_end, "denoise_s": denoise}


def paired_ratio(base: list[float], other: list[float]) -> float:
    """Median over turns of base / other, each ratio from two neighbouring timings."""
    return statistics.median(b / max(o, 1e-9) for b, o in zip(base, other))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def compare(pipe, call, method: cat.MethodConfig | None, device: torch.device, warmup: int = 1, repeats: int = 3,
            compile: bool = False, compile_mode: str = "default") -> dict:
    """Full model and method timed in the same run; returns flat metrics with their ratios.

    `call(**overrides)` runs the pipeline; the method's call overrides (e.g. fewer steps) are passed.
    After each one's warm-ups, the timed calls alternate (full, method, full, method, ...), so a machine
    whose speed drifts weighs on both alike; speedups are the medians of the paired ratios of
    neighbouring calls. Peak memory is each variant's highest over its calls (CUDA; on CPU the
    process's peak resident size).
    """
    names = ["full"] + (["method"] if method is not None else [])
    peak = dict.fromkeys(names, 0.0)

    def run(name: str, warm: int, timed: int) -> dict:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if name == "full":
            with compiled_blocks(pipe.transformer, compile, compile_mode):
                result = time_pipeline(call, pipe, device, warm, timed)
        else:
            with cat.apply(pipe, method, compile=compile, compile_mode=compile_mode) as handle:
                overrides = handle.call_overrides()
                result = time_pipeline(lambda: call(**overrides), pipe, device, warm, timed)
        peak[name] = max(peak[name], peak_memory_mb(device))
        return result

    label = {"full": "full model", "method": getattr(method, "name", None) or "method"}
    for name in names:
        if warmup:
            log.info("timing: %s, %d warm-up call(s) ...", label[name], warmup)
            run(name, warmup, 0)
    turns = {name: ([], []) for name in names}
    for turn in range(repeats):
        for name in names:
            log.info("timing: %s, turn %d/%d ...", label[name], turn + 1, repeats)  # outside the timed call
            result = run(name, 0, 1)
            turns[name][0].extend(result["end_to_end_s"])
            turns[name][1].extend(result["denoise_s"])
    full = summarise(*turns["full"])
    out = {"latency_full_s": full["median_s"], "latency_full_spread_s": full["spread_s"],
           "denoise_full_s": full["denoise_median_s"], "peak_memory_full_mb": peak["full"]}
    if method is None:
        return out
    timed = summarise(*turns["method"])
    out.update({"latency_s": timed["median_s"], "latency_spread_s": timed["spread_s"],
                "denoise_s": timed["denoise_median_s"], "peak_memory_mb": peak["method"],
                "speedup": paired_ratio(full["end_to_end_s"], timed["end_to_end_s"]),
                "denoise_speedup": paired_ratio(full["denoise_s"], timed["denoise_s"]),
                "latency_repeats": repeats, "latency_compiled": int(compile)})
    return out
