"""The GPU check (`scripts/device_check.py`): its pieces at once, its whole smoke run with the slow tests."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import cat

spec = importlib.util.spec_from_file_location("device_check",
                                              Path(__file__).resolve().parents[1] / "scripts" / "device_check.py")
check = sys.modules["device_check"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
spec.loader.exec_module(check)


@pytest.mark.parametrize("name, tokens, text", [("sd3", 4096, 333), ("pixart", 4096, 300), ("flux", 4096, 512)])
def test_full_size_models_come_from_the_conf_files_and_build_on_meta(name, tokens, text):
    geometry = check.FULL[name]
    model = check.build(geometry, "meta", torch.float32)
    loop = check.Loop(model, geometry, "meta", torch.float32)
    hidden = loop.call["hidden_states"]
    patch = cat.families.family_for(model).token_patch(model.config)
    assert geometry.height * geometry.width // patch**2 == tokens
    assert loop.call["encoder_hidden_states"].shape[1] == text
    assert hidden.shape[0] == (2 if geometry.cfg else 1) and len(loop.timesteps) == geometry.steps
    if name == "flux":
        assert len(model.transformer_blocks) == 4 and len(model.single_transformer_blocks) == 8


def test_macs_of_a_schedule_are_counted_per_kind_of_step():
    geometry = check.SMOKE["sd3"]
    config = cat.CATConfig(warmup_steps=3, num_clusters=4)
    full, pruned = check.schedule_macs(geometry, None), check.schedule_macs(geometry, config)
    n = geometry.height * geometry.width // 4
    schedule = config.offline_schedule(geometry.steps, n)
    assert full % geometry.steps == 0 and 1 < full / pruned < geometry.steps / schedule.count(n)
    toca = check.schedule_macs(geometry, cat.METHODS["toca"](interval=2))  # no offline schedule: every step
    assert toca < full


def test_a_section_that_would_not_fit_is_skipped_and_the_report_is_written(tmp_path, capsys):
    report = check.Report(tmp_path, "gpu-x", {"gpu": "GPU X", "dtype": "bfloat16"})

    class Args:
        smoke, device, dtype, out, budget, turns = False, "cpu", "float32", str(tmp_path), 10, 1

    runner = check.Check(Args())
    runner.report = report
    ran = []
    runner.section("big", 60, lambda: ran.append(1))
    runner.section("small", 1, lambda: report.put("small", "answer", 0.5))
    assert ran == []
    out = capsys.readouterr().out
    assert "NOTE=big skipped: needs about 60 s" in out and "answer=0.5" in out
    saved = json.loads((tmp_path / "gpu-x.json").read_text())
    assert saved["values"]["answer"] == 0.5 and "big skipped" in saved["notes"][0]
    assert "| answer | 0.5 |" in (tmp_path / "gpu-x.md").read_text()


@pytest.mark.slow
def test_the_smoke_run_prints_every_section(tmp_path, capsys):
    check.main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for key in ("speedup_eager=", "speedup_efficiency=", "compiled_graphs=2", "compiled_recompiles=0",
                "speedup_cudagraphs=", "cudagraphs_rel_err=", "pixart_speedup_eager=",
                "flux_speedup_eager=", "peer_forecast_search_speedup_eager=", "peer_ras_speedup_eager=", "total_s="):
        assert key in out, key
    assert "failed" not in out
    values = json.loads((tmp_path / "cpu-smoke.json").read_text())["values"]
    assert values["latents_finite"] and values["aten_ops_pruned_step"] > 0
    assert values["cudagraphs_rel_err"] < 1e-5  # dynamo's eager backend: the same kernels


@pytest.mark.slow  # every peer's whole schedule on a meta SD3-medium: about 10 s
def test_each_peer_spends_about_the_reference_methods_macs_on_sd3_medium():
    geometry = check.FULL["sd3"]
    full = check.schedule_macs(geometry, None)
    method = check.reference()
    ratio = full / check.schedule_macs(geometry, method(**method.authors("sd3", geometry.steps)))
    for peer in check.peers():
        cls = cat.METHODS[peer["method"]]
        config = cls(**{**cls.authors("sd3", geometry.steps), **peer["set"]})
        assert abs(full / check.schedule_macs(geometry, config) / ratio - 1) < 0.05, peer  # scripts/device_check.yaml
