"""`python run.py` exactly as a newcomer types it: the shipped model, the bundled prompts, CAT against
the full model, offline on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.prompts import shapes

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(not (shapes.DEFAULT_MODEL_DIR / "model_index.json").exists(), reason="the default model is not in assets/")
@pytest.mark.slow
def test_the_default_run_completes_offline(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "run.py", f"output_root={tmp_path}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny_sd3_shapes-shapes-cat").glob("default-*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("adherence", "adherence_full", "psnr", "ssim", "macs_reduction", "speedup", "num_images"):
        assert key in metrics, key
    assert metrics["num_images"] == 16
    # The shuffled-caption chance level of the shipped model is about 0.05 (its model card).
    assert metrics["adherence_full"] > 0.25 and metrics["adherence"] > 0.25, metrics
    assert metrics["psnr"] > 25 and metrics["ssim"] > 0.9, metrics
    assert 0.3 < metrics["macs_reduction"] < 0.6, metrics
    for name in ("grid.png", "selection.png", "config.yaml", "records.jsonl"):
        assert (run_dir / name).exists(), name
    assert "adherence_full" in proc.stdout  # the table is printed
