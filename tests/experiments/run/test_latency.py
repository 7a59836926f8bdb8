"""Latency comparisons time whole generations, the full model and the method in turns, pair neighbouring calls,
and say how far the speedup can be trusted."""

import contextlib
import logging
from types import SimpleNamespace

import pytest
import torch

import cat
from cat import testing
from cat.engine.patching import has_hook
from cat.engine.token_handle import HOOK_NAME
from experiments.run import latency


class StubTimer:
    def __init__(self, *args):
        pass

    def total(self):
        return 1.0

    def remove(self):
        pass


def quiet(monkeypatch, load=0.0):
    monkeypatch.setattr(latency, "machine_load", lambda: load)
    monkeypatch.setattr(latency, "machine_cores", lambda: 2)


def clock_of(monkeypatch, stamps):
    clock = iter(stamps + [1000.0] * 100)  # start, stop per timed call
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(latency, "DenoiseTimer", StubTimer)


@pytest.mark.usefixtures("one_thread")
def test_full_model_and_method_are_timed_in_turns_and_paired(monkeypatch):
    pipe = testing.tiny_sd3_pipeline()
    order = []

    def call(**overrides):
        order.append("method" if has_hook(pipe.transformer, HOOK_NAME) else "full")
        return pipe(["a red circle"], num_inference_steps=4, height=32, width=32, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **overrides)

    clock_of(monkeypatch, [0.0, 4.0, 10.0, 12.0, 20.0, 28.0, 30.0, 31.0])
    quiet(monkeypatch)
    out = latency.compare(pipe, call, cat.CATConfig(warmup_steps=2, num_clusters=4), torch.device("cpu"),
                          warmup=1, repeats=2)
    assert order == ["full", "method", "full", "method", "full", "method"]
    assert not has_hook(pipe.transformer, HOOK_NAME)
    assert out["latency_full_s"] == 6.0 and out["latency_s"] == 1.5  # medians of (4, 8) and (2, 1)
    assert out["speedup"] == pytest.approx(5.0)  # median of the paired ratios 4/2 and 8/1, not 6/1.5


# --- stub pipelines: what is timed and how often the device is synchronised ---------------------------------------


def stub_pipe(calls_per_generation: int = 5):
    """A 'pipeline' whose every call makes `calls_per_generation` transformer calls."""
    transformer = torch.nn.Linear(2, 2)
    pipe = SimpleNamespace(transformer=transformer)
    return pipe, lambda **o: [transformer(torch.zeros(1, 2)) for _ in range(calls_per_generation)]


@contextlib.contextmanager
def stub_apply(pipe, method, compile=False, compile_mode="default"):
    yield SimpleNamespace(call_overrides=lambda reference_steps=None: {})


def test_a_generation_is_timed_whole_with_one_sync_before_and_one_after(monkeypatch):
    """Issue 32: a synchronisation around every transformer call added launch time to host-bound pruned steps and
    removed the CPU/GPU overlap; now a timed generation has one before and one after, whatever its calls."""
    pipe, call = stub_pipe(calls_per_generation=5)
    syncs = []
    monkeypatch.setattr(latency, "_sync", lambda device: syncs.append(device))
    monkeypatch.setattr(latency.cat, "apply", stub_apply)
    quiet(monkeypatch)
    out = latency.compare(pipe, call, cat.CATConfig(), torch.device("cpu"), warmup=1, repeats=3)
    assert len(syncs) == 2 * 2 * 3  # (full, method) x 3 turns, two each; none in the warm-ups
    assert out["denoise_s"] > 0 and out["denoise_s"] <= out["latency_s"]  # the denoising share, read without syncs


def test_the_denoising_time_sums_the_transformer_calls_on_the_cpu(monkeypatch):
    pipe, call = stub_pipe(calls_per_generation=3)
    ticks = iter(range(100))
    monkeypatch.setattr(latency.time, "perf_counter", lambda: float(next(ticks)))
    end_to_end, denoise = latency.time_call(call, pipe, torch.device("cpu"))
    assert end_to_end == 7.0 and denoise == 3.0  # start 0; calls (1, 2), (3, 4), (5, 6); stop 7


def test_under_cuda_graphs_each_variant_warms_up_twice_and_each_turn_once_more(monkeypatch):
    pipe, call = stub_pipe(calls_per_generation=1)
    made = []
    monkeypatch.setattr(latency, "compiled_blocks", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(latency, "_sync", lambda device: None)
    quiet(monkeypatch)
    latency.compare(pipe, lambda **o: made.append(1), None, torch.device("cpu"), warmup=1, repeats=2, compile=True,
                    compile_mode="reduce-overhead")
    assert len(made) == 2 + 2 * 2  # two warm-up generations, then per turn an untimed and a timed one


# --- trust: the spread, the load, the flag ---------------------------------------------------------------------


@pytest.mark.parametrize("stamps, load, noisy", [
    ([0.0, 4.0, 4.0, 6.0, 10.0, 14.0, 14.0, 16.0, 20.0, 24.0, 24.0, 26.0], 0.5, 0),  # ratios 2, 2, 2; quiet
    ([0.0, 4.0, 4.0, 6.0, 10.0, 14.0, 14.0, 18.0, 20.0, 24.0, 24.0, 25.0], 0.5, 1),  # ratios 2, 1, 4: wide
    ([0.0, 4.0, 4.0, 6.0, 10.0, 14.0, 14.0, 16.0, 20.0, 24.0, 24.0, 26.0], 7.7, 1),  # steady, but a busy machine
], ids=["steady", "wide", "busy"])
def test_a_timing_says_how_far_it_can_be_trusted(monkeypatch, caplog, stamps, load, noisy):
    """Issue 34: on a busy machine a speedup of 0.94 (README: 1.73x) with turn spreads of half the median was
    saved and shown as the result."""
    pipe, call = stub_pipe()
    monkeypatch.setattr(latency.cat, "apply", stub_apply)
    clock_of(monkeypatch, stamps)
    quiet(monkeypatch, load)
    caplog.set_level(logging.WARNING, logger=latency.__name__)
    out = latency.compare(pipe, call, cat.CATConfig(), torch.device("cpu"), warmup=0, repeats=3)
    assert out["speedup_noisy"] == noisy and out["latency_cores"] == 2 and out["latency_load"] == load
    assert out["speedup_spread"] == pytest.approx(0.0 if stamps[7] == 16.0 else 3.0)
    assert ("timing is noisy" in caplog.text) == bool(noisy)
    if load > 2:
        assert "a busy machine: load average 7.7, 7.7 (before, after) on 2 cores" in caplog.text
    if noisy:
        assert "metrics.latency.retime=true" in caplog.text


def test_one_turn_is_never_trusted():
    assert latency.trust([1.7], [0.1, 0.1], 2)["speedup_noisy"] == 1


def test_peak_memory_is_reported_on_cuda_only(monkeypatch):
    """On the CPU the process's peak resident size was reported for both variants (always equal): it said
    nothing about a method, whose own memory is its cache_bytes."""
    pipe, call = stub_pipe()
    monkeypatch.setattr(latency.cat, "apply", stub_apply)
    quiet(monkeypatch)
    out = latency.compare(pipe, call, cat.CATConfig(), torch.device("cpu"), warmup=0, repeats=2)
    assert not [k for k in out if k.startswith("peak_memory")]
