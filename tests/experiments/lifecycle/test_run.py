"""Runs end to end on a random-weight model built in memory: runs, resumes, sweeps, failures. run.py runs as a
process where the process is under test (its exit code and stderr, a multirun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.lifecycle import launch
from experiments.lifecycle.runs import print_table

ROOT = Path(__file__).resolve().parents[3]


def run(*args, check=True):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def test_a_run_writes_the_results_and_a_rerun_skips_it(tiny_run, caplog):
    run_dir, metrics = tiny_run.run_dir, tiny_run.metrics
    assert run_dir.parent == tiny_run.output_root / "runs" / "tiny_random-shapes-cat"
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    for key in ("psnr", "ssim", "adherence", "adherence_full", "macs_reduction", "transformer_macs", "speedup"):
        assert key in metrics
    assert 0 < metrics["macs_reduction"] < 1
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["index"]) for r in records} == {("full", 0), ("full", 1), ("cat", 0), ("cat", 1)}
    assert all((run_dir / r["path"]).exists() for r in records)
    for name in ("grid.png", "selection.npz", "selection.png", "config.yaml"):
        assert (run_dir / name).exists(), name
    stamp = (run_dir / "images" / "cat" / "00000.png").stat().st_mtime_ns
    caplog.set_level("INFO")
    assert launch.run(*tiny_run.overrides, f"output_root={tiny_run.output_root}") == (run_dir, metrics)
    assert "already done" in caplog.text
    assert (run_dir / "images" / "cat" / "00000.png").stat().st_mtime_ns == stamp


def test_bad_override_fails_before_loading_a_model(tmp_path):
    proc = run("debug=tiny", f"output_root={tmp_path}", "method.config.keep_ratio=1.5", check=False)
    assert proc.returncode != 0
    assert "keep_ratio=1.5 is invalid" in proc.stderr
    assert not (tmp_path / "full_images").exists()


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_macs_task_needs_no_weights(tmp_path):
    run_dir, metrics = launch.run("task=macs", "model=sd3_medium", "logger=none", f"output_root={tmp_path}")
    assert "transformer_macs_per_step_full" in print_table(metrics)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert metrics["transformer_macs_per_step_full"] == pytest.approx(8.904e12, rel=5e-3)


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_sweep_records_failures_keeps_the_others_and_resumes(tmp_path):
    args = ["-m", "debug=tiny", f"output_root={tmp_path}", "group=smoke", "metrics=fast", "data.limit=2",
            "method=cat,cat_random", "method.config.keep_ratio=0.3,1.5"]
    proc = run(*args, check=False)
    assert proc.returncode == 1 and "2 sweep cell(s) failed" in proc.stderr  # the others finish, then it fails
    sweep = tmp_path / "sweeps" / "smoke-tiny_random"  # one folder per sweep group and model
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 4
    assert sorted(table.status) == ["done", "done", "failed", "failed"]
    assert table[table.status == "failed"].error.str.contains("keep_ratio=1.5").all()
    assert (table[table.status == "done"].psnr > 20).all()
    assert (sweep / "summary.md").exists()
    done = next(p for p in sweep.glob("*keep_ratio=0.3*method=cat,*") if p.is_dir())
    stamp = (done / "metrics.json").stat().st_mtime_ns
    run(*args, check=False)
    assert (done / "metrics.json").stat().st_mtime_ns == stamp


def test_latency_task_times_full_model_and_method_in_one_run(tmp_path):
    _, metrics = launch.run("debug=tiny", "task=latency", f"output_root={tmp_path}", "metrics.latency.repeats=2")
    for key in ("latency_full_s", "latency_s", "speedup", "latency_spread_s", "speedup_spread", "speedup_noisy",
                "latency_load", "latency_cores", "latency_repeats"):
        assert key in metrics, key
    assert "peak_memory_mb" not in metrics  # on the CPU the process's peak said nothing about the method
    assert metrics["latency_repeats"] == 2 and metrics["latency_compiled"] == 0
    assert not list(tmp_path.rglob("*.png"))  # timing only: no images are written
    assert "speedup" in print_table(metrics)


@pytest.mark.slow  # a run.py process, about 15 s
def test_a_librarys_warning_reaches_the_run_log(tmp_path):
    """run.py routes Python warnings into the log (a budget the schedule cannot meet says so in run.log)."""
    run("task=macs", "model=tiny_sd3_shapes", "method=forecast_search", "method.config.schedule=interval",
        "method.config.budget=0.99", "logger=none", f"output_root={tmp_path}")
    (log,) = tmp_path.glob("runs/*/*/run.log")
    assert "[py.warnings][WARNING]" in log.read_text() and "(budget=0.99) is not met" in log.read_text()
