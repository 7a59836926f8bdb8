"""Two CPU processes (accelerate's PartialState over torch.distributed/gloo) give the single-process result: the
images, the metrics, and the executed MACs each process counted on its own batches."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
ARGS = ["debug=tiny", "data.limit=4", "batch_size=2", "metrics.latency.enabled=false"]  # a batch per process


@pytest.mark.slow
def test_two_processes_merge_to_the_single_process_result(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    subprocess.run([torchrun, "--nproc_per_node", "2", "run.py", *ARGS, f"output_root={tmp_path / 'multi'}"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([sys.executable, "run.py", *ARGS, f"output_root={tmp_path / 'single'}"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    multi, single = (next((tmp_path / k / "runs").glob("*/*")) for k in ("multi", "single"))
    assert json.loads((multi / "metrics.json").read_text()) == json.loads((single / "metrics.json").read_text())
    for variant in ("full", "cat"):
        names = sorted(p.name for p in (single / "images" / variant).glob("*.png"))
        assert names == sorted(p.name for p in (multi / "images" / variant).glob("*.png")) and len(names) == 4
        lines = (multi / "images" / variant / "macs.jsonl").read_text()
        assert lines == (single / "images" / variant / "macs.jsonl").read_text() and len(lines.splitlines()) == 2
        for name in names:
            a = np.asarray(Image.open(multi / "images" / variant / name))
            b = np.asarray(Image.open(single / "images" / variant / name))
            assert np.array_equal(a, b), (variant, name)
