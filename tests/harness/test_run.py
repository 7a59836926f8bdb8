"""run.py end to end on a random-weight model built in memory: runs, resumes, sweeps, failures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args, check=True):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def test_a_run_writes_the_results_and_a_rerun_skips_it(tmp_path):
    args = ["debug=tiny", f"output_root={tmp_path}", "data.limit=2"]
    run(*args)
    (run_dir,) = (tmp_path / "runs" / "tiny_random-shapes-cat").glob("limit=2-*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
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
    second = run(*args)
    assert "already done" in second.stdout + second.stderr
    assert (run_dir / "images" / "cat" / "00000.png").stat().st_mtime_ns == stamp


def test_bad_override_fails_before_loading_a_model(tmp_path):
    proc = run("debug=tiny", f"output_root={tmp_path}", "method.config.keep_ratio=1.5", check=False)
    assert proc.returncode != 0
    assert "keep_ratio=1.5 is invalid" in proc.stderr
    assert not (tmp_path / "full_images").exists()


def test_macs_task_needs_no_weights(tmp_path):
    proc = run("task=macs", "model=sd3_medium", "logger=none", f"output_root={tmp_path}")
    assert "transformer_macs_per_step_full" in proc.stdout
    metrics = json.loads(next((tmp_path / "runs").glob("*/*/metrics.json")).read_text())
    assert metrics["transformer_macs_per_step_full"] == pytest.approx(8.904e12, rel=5e-3)


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
    proc = run("debug=tiny", "task=latency", f"output_root={tmp_path}", "metrics.latency.repeats=2")
    metrics = json.loads(next((tmp_path / "runs").glob("*/*/metrics.json")).read_text())
    for key in ("latency_full_s", "latency_s", "speedup", "latency_spread_s", "peak_memory_mb", "latency_repeats"):
        assert key in metrics, key
    assert metrics["latency_repeats"] == 2 and metrics["latency_compiled"] == 0
    assert not list(tmp_path.rglob("*.png"))  # timing only: no images are written
    assert "speedup" in proc.stdout
