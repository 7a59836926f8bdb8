"""Latency comparisons time the full model and the method in turns and pair neighbouring calls."""

import pytest
import torch

import cat
from cat import testing
from cat.engine.patching import has_hook
from cat.engine.token_handle import HOOK_NAME
from experiments.run import latency


class StubTimer:
    total = 1.0

    def __init__(self, *args):
        pass

    def remove(self):
        pass


@pytest.mark.usefixtures("one_thread")
def test_full_model_and_method_are_timed_in_turns_and_paired(monkeypatch):
    pipe = testing.tiny_sd3_pipeline()
    order = []

    def call(**overrides):
        order.append("method" if has_hook(pipe.transformer, HOOK_NAME) else "full")
        return pipe(["a red circle"], num_inference_steps=4, height=32, width=32, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **overrides)

    clock = iter([0.0, 4.0, 10.0, 12.0, 20.0, 28.0, 30.0, 31.0] + [100.0] * 100)  # start, stop per timed call
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(latency, "_TransformerTimer", StubTimer)
    out = latency.compare(pipe, call, cat.CATConfig(warmup_steps=2, num_clusters=4), torch.device("cpu"),
                          warmup=1, repeats=2)
    assert order == ["full", "method", "full", "method", "full", "method"]
    assert not has_hook(pipe.transformer, HOOK_NAME)
    assert out["latency_full_s"] == 6.0 and out["latency_s"] == 1.5  # medians of (4, 8) and (2, 1)
    assert out["speedup"] == pytest.approx(5.0)  # median of the paired ratios 4/2 and 8/1, not 6/1.5
