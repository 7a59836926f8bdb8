"""Latency, always as ratios against the full model measured in the same run, and how far to trust them.

Whole generations are timed: one device synchronisation before a pipeline call and one after, nothing in
between, so the launch queue runs ahead of the GPU as it does in use (a synchronisation per transformer call
would add each call's launch time to host-bound pruned steps and remove the CPU/GPU overlap). The
denoising loop's share is read without synchronising: on CUDA an event pair recorded around every
transformer call, read after the call's final synchronisation; elsewhere the wall time around each call.
Full model and method run in alternating turns after their warm-ups; the speedup is the median of the
paired ratios of neighbouring calls, so a machine whose speed drifts weighs on both alike.

A timing says how trustworthy it is: the spread of its paired ratios (`speedup_spread`) and the machine's
load before and after (`latency_load`, the 1-minute load average, against `latency_cores`). It is marked
`speedup_noisy` when the ratios' range exceeds `NOISY_SPREAD` of their median, when there were fewer than
two turns to compare, or when the machine was busy (load above `BUSY_LOAD` per core; the run's own
threads count, so a quiet machine that the run keeps busy stays below it). A noisy timing is said so in
the log and kept with its flag; `metrics.latency.retime=true` (or `task=latency`) times it again without
redoing the images.

`compile=True` compiles the transformer's blocks (`torch.compile`, `compile_mode`): the full model's blocks
for its calls, the method's (applied first, then compiled, so its hooks and processors are inside the
graphs) for its calls, each compilation undone after its turn. Under CUDA graphs (`reduce-overhead`) each
variant is warmed up with at least two generations, and every turn starts with one untimed generation,
since a turn re-applies the variant and its graphs are then replayed afresh. Peak memory is reported on
CUDA only (the allocator's peak per variant); on other devices the process's peak says nothing about a
method, whose own memory is its `cache_bytes` (recorded by the generate task).
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import torch

import cat

from .pipelines import compiled_blocks

log = logging.getLogger(__name__)

TRUST = ("speedup_spread", "speedup_noisy")  # shown next to the speedup wherever a table shows it
NOISY_SPREAD = 0.10  # (max - min) / median of the paired ratios above which a speedup is noisy
BUSY_LOAD = 1.25  # 1-minute load average per core above which the machine counts as busy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class DenoiseTimer:
    """The time spent inside the transformer's calls during one pipeline call, without synchronising per call:
    on CUDA an event pair per call, read by `total()` after the caller's final synchronisation; elsewhere the
    wall time around each call."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[list] = []
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, *_):
        self.marks.append([self._mark(), None])

    def _post(self, *_):
        self.marks[-1][1] = self._mark()

    def total(self) -> float:
        """Seconds inside the transformer's calls (call it after the device is synchronised)."""
        if self.cuda:
            return sum(start.elapsed_time(end) for start, end in self.marks) / 1000
        return sum(end - start for start, end in self.marks)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def time_call(call, pipe, device: torch.device) -> tuple[float, float]:
    """(end to end, denoising) seconds of one `call()` of `pipe`: one synchronisation before, one after."""
    timer = DenoiseTimer(pipe.transformer, device)
    try:
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        return time.perf_counter() - start, timer.total()
    finally:
        timer.remove()


def summarise(end_to_end: list[float], denoise: list[float]) -> dict:
    spread = lambda xs: (max(xs) - min(xs)) if len(xs) > 1 else 0.0  # noqa: E731
    return {"median_s": statistics.median(end_to_end), "spread_s": spread(end_to_end),
            "denoise_median_s": statistics.median(denoise), "denoise_spread_s": spread(denoise),
            "end_to_end_s": end_to_end, "denoise_s": denoise}


def paired_ratios(base: list[float], other: list[float]) -> list[float]:
    """base / other per turn, each ratio from two neighbouring timings."""
    return [b / max(o, 1e-9) for b, o in zip(base, other)]


def paired_ratio(base: list[float], other: list[float]) -> float:
    """Median over turns of base / other, each ratio from two neighbouring timings."""
    return statistics.median(paired_ratios(base, other))


def machine_load() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def trust(ratios: list[float], loads: list[float | None], cores: int) -> dict:
    """How far a speedup measured as the median of `ratios` can be trusted (module docstring): its spread, the
    machine's load, and `speedup_noisy` with the reasons it is set (`noise`: empty when it is not)."""
    speedup = statistics.median(ratios)
    spread = max(ratios) - min(ratios) if len(ratios) > 1 else 0.0
    known = [load for load in loads if load is not None]
    reasons = []
    if len(ratios) < 2:
        reasons.append("one turn, no spread to judge by (metrics.latency.repeats >= 3 gives one)")
    elif spread > NOISY_SPREAD * speedup:
        reasons.append(f"paired ratios from {min(ratios):.3g} to {max(ratios):.3g} over {len(ratios)} turns")
    if known and max(known) > BUSY_LOAD * cores:
        said = ", ".join(f"{load:.1f}" for load in known)
        reasons.append(f"a busy machine: load average {said} (before, after) on {cores} cores")
    return {"speedup_spread": spread, "speedup_noisy": int(bool(reasons)),
            "latency_load": max(known) if known else None, "latency_cores": cores, "noise": reasons}


def compare(pipe, call, method: cat.MethodConfig | None, device: torch.device, warmup: int = 1, repeats: int = 3,
            compile: bool = False, compile_mode: str = "default", reference_steps: int | None = None) -> dict:
    """Full model and method timed in the same run; returns flat metrics with their ratios and their trust.

    `call(**overrides)` runs the pipeline; the method's call overrides (e.g. fewer steps) are passed, made for
    `reference_steps` (the steps `call` runs without them).
    After each one's warm-ups, the timed calls alternate (full, method, full, method, ...); speedups are the
    medians of the paired ratios of neighbouring calls (module docstring).
    """
    names = ["full"] + (["method"] if method is not None else [])
    graphs = compile and compile_mode == "reduce-overhead"
    warmup = max(warmup, 2) if graphs else warmup
    peak = dict.fromkeys(names, 0.0)

    def run(name: str, untimed: int, timed: bool) -> tuple[float, float] | None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if name == "full":
            with compiled_blocks(pipe.transformer, compile, compile_mode):
                result = _calls(call, pipe, device, untimed, timed)
        else:
            with cat.apply(pipe, method, compile=compile, compile_mode=compile_mode) as handle:
                overrides = handle.call_overrides(reference_steps)
                result = _calls(lambda: call(**overrides), pipe, device, untimed, timed)
        if device.type == "cuda":
            peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device) / 2**20)
        return result

    label = {"full": "full model", "method": getattr(method, "name", None) or "method"}
    loads = [machine_load()]
    for name in names:
        if warmup:
            log.info("timing: %s, %d warm-up call(s) ...", label[name], warmup)
            run(name, warmup, False)
    turns = {name: ([], []) for name in names}
    for turn in range(repeats):
        for name in names:
            log.info("timing: %s, turn %d/%d ...", label[name], turn + 1, repeats)  # outside the timed call
            end_to_end, denoise = run(name, int(graphs), True)
            turns[name][0].append(end_to_end)
            turns[name][1].append(denoise)
    loads.append(machine_load())
    full = summarise(*turns["full"])
    out = {"latency_full_s": full["median_s"], "latency_full_spread_s": full["spread_s"],
           "denoise_full_s": full["denoise_median_s"], "latency_repeats": repeats, "latency_compiled": int(compile)}
    if device.type == "cuda":
        out["peak_memory_full_mb"] = peak["full"]
    if method is None:
        return out
    timed = summarise(*turns["method"])
    ratios = paired_ratios(full["end_to_end_s"], timed["end_to_end_s"])
    judged = trust(ratios, loads, machine_cores())
    noise = judged.pop("noise")
    out.update({"latency_s": timed["median_s"], "latency_spread_s": timed["spread_s"],
                "denoise_s": timed["denoise_median_s"], "speedup": statistics.median(ratios),
                "denoise_speedup": paired_ratio(full["denoise_s"], timed["denoise_s"]), **judged})
    if device.type == "cuda":
        out["peak_memory_mb"] = peak["method"]
    if noise:
        log.warning("timing is noisy: speedup %.3g (%s); kept with speedup_noisy=1: retime it on a quiet machine with "
                    "metrics.latency.retime=true (the images are kept) or task=latency", out["speedup"],
                    "; ".join(noise))
    return out


TIMING = ("latency_", "denoise_", "speedup", "peak_memory_")  # the prefixes of what `compare` measures


def without_timing(metrics: dict) -> dict:
    """`metrics` without what `compare` measured (before a run is timed again)."""
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


def _calls(call, pipe, device: torch.device, untimed: int, timed: bool) -> tuple[float, float] | None:
    """`untimed` calls, then one timed call when `timed`: its (end to end, denoising) seconds."""
    for _ in range(untimed):
        call()
    return time_call(call, pipe, device) if timed else None
