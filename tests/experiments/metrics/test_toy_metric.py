"""Adding a metric is one file in experiments/metrics/ with one registration, and no other edit.

In a copy of the project, a toy metric (each image's mean brightness) is added as
`experiments/metrics/brightness.py`. A run computes it for the full model and the method, with its bootstrap
interval and a value in every per-image record; a sweep's summary and trends and the main table
(`scripts/make_tables.py`) show it, because they ask the registry rather than a list of names.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

TOY = '''
"""A toy metric: the mean brightness of each image, in [0, 1]."""

import numpy as np

from .registry import Metric, Scoring, register


def brightness(scoring: Scoring) -> list[float]:
    return [float(np.asarray(image.convert("L")).mean() / 255) for image in scoring.images]


register(Metric(name="brightness", short="brightness", label="mean brightness", compute=brightness,
                enabled=lambda settings: True, margin=0.01))
'''

CHECK = '''
import json
import shutil
from pathlib import Path

import torch
import yaml

from experiments.lifecycle import launch
from experiments.reports.results import load_runs
from experiments.reports.sweeps import write_summary
from scripts.make_tables import main_table

torch.set_num_threads(1)  # tiny models run fastest single-threaded on a shared CPU
out = Path(OUT)
run_dir, metrics = launch.run("debug=tiny", "data.limit=2", "batch_size=2", "model.steps=4",
                              "metrics.latency.enabled=false", f"output_root={out / 'outputs'}")
assert 0 <= metrics["brightness"] <= 1 and 0 <= metrics["brightness_full"] <= 1, metrics
assert metrics["brightness_lo"] <= metrics["brightness"] <= metrics["brightness_hi"]
records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
assert len(records) == 4 and all(0 <= r["brightness"] <= 1 for r in records)

sweep = out / "sweep"  # two cells, told apart by an override
for name in ("a", "b"):
    shutil.copytree(run_dir, sweep / name)
    (sweep / name / ".hydra").mkdir()
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+note={name}"]))
frame = write_summary(sweep)
assert "brightness" in frame and "brightness_full" in frame
assert "brightness" in (sweep / "summary.csv").read_text().splitlines()[0]
assert "brightness" in (sweep / "trends.md").read_text()

table = main_table(load_runs(out / "outputs"))
assert {"brightness", "brightness_full", "brightness_lo", "brightness_hi"} <= set(table.columns), list(table.columns)
print("toy metric ok")
'''


def test_a_toy_metric_is_computed_and_in_the_tables(tmp_path):
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("cat", "experiments", "conf", "scripts"):
        shutil.copytree(ROOT / folder, project / folder, ignore=ignore)
    shutil.copy2(ROOT / "run.py", project / "run.py")
    (project / "experiments" / "metrics" / "brightness.py").write_text(textwrap.dedent(TOY).lstrip())
    paths = [str(project), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    code = f"OUT = {str(tmp_path / 'out')!r}\n" + textwrap.dedent(CHECK)
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "toy metric ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
