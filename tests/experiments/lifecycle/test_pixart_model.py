"""The embedded PixArt-Sigma-shaped models run as the default is: `python run.py model=tiny_pixart_shapes` on the
model shipped in assets/ (trained on the default's shapes), `model=tiny_pixart_scenes` (not shipped: 1024 tokens
cost more CPU than a session has) on a random-weight pipeline of its shape that the test saves (train_tiny's
builders, the conf's model.local_path pointed at it), and the one-line refusal while a model is not there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scripts.train_tiny as train
from experiments.base.config_files import ConfigError, resolve
from experiments.tasks.validation import validate
from tests.experiments.prompts.test_train_pixart import tiny_pixart
from tests.experiments.tasks.test_configs import _compose

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "assets" / "tiny-pixart-shapes"


def run(model, *args):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "run.py", f"model={model}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def default_outputs(proc, output_root: Path, images: int, name: str) -> dict:
    """What the default run's test asks of its run (tests/experiments/lifecycle/test_default_run.py): the metrics,
    the images of both variants, the figures, the config, the records, the table and the results line."""
    (run_dir,) = (output_root / "runs" / name).iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("adherence", "adherence_full", "psnr", "ssim", "macs_reduction", "speedup", "num_images"):
        assert key in metrics, key
    assert metrics["num_images"] == images and 0 < metrics["macs_reduction"] < 1, metrics
    for name in ("grid.png", "selection.png", "config.yaml", "records.jsonl"):
        assert (run_dir / name).exists(), name
    for variant in ("full", "cat"):
        assert len(list((run_dir / "images" / variant).glob("*.png"))) == images, variant
    assert "adherence_full" in proc.stdout and f"results: {run_dir} (took " in proc.stdout
    return metrics


@pytest.mark.slow  # 24 to 50 s on 2 busy cores (a run.py process, both variants, MACs, timing, figures)
def test_the_pixart_model_runs_as_the_default_does(tmp_path):
    """The model's conf as shipped (PixArtSigmaPipeline from safetensors, its T5 call arguments, CAT through the
    PixArt family), on a random-weight model of its geometry: 128x128 pixels, 1024 image tokens."""
    model = tmp_path / "model"
    torch.manual_seed(0)
    tiny_pixart(train.scenes_data()).save_pretrained(model, safe_serialization=True)
    proc = run("tiny_pixart_scenes", f"model.local_path={model}", f"output_root={tmp_path}", "data.limit=2", "batch_size=2",
               "model.steps=4", "metrics.latency.repeats=1", "metrics.latency.warmup=0",
               "metrics.latency.num_prompts=1")
    metrics = default_outputs(proc, tmp_path, images=2, name="tiny_pixart_scenes-scenes-cat")
    assert 0.2 < metrics["macs_reduction"] < 0.6, metrics  # CAT pruned the PixArt blocks after its warm-up


def test_a_missing_pixart_model_is_one_line_with_the_training_command():
    """A fresh clone (the model is not in assets/ until it is trained): validation refuses before any model
    loads, in one line that says how to train it; the transformer's config is read from the model's folder."""
    cfg = _compose(["model=tiny_pixart_scenes", "model.local_path=assets/no-such-model"])
    assert cfg.model.transformer.config_file == "assets/no-such-model/transformer/config.json"
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("model=tiny_pixart_scenes is not at assets/no-such-model")
    assert "python scripts/train_tiny.py --arch pixart --data scenes --out assets/tiny-pixart-scenes " \
           "--vae-from assets/tiny-sd3-scenes/vae" in message


def test_the_shipped_pixart_model_is_small_safetensors_with_its_sampler():
    from experiments.run.pipelines import load_pipeline

    cfg = _compose(["model=tiny_pixart_shapes"]).model
    assert resolve(cfg.local_path) == SHIPPED and cfg.transformer.config_file == f"{cfg.local_path}/transformer/config.json"
    sizes = [f.stat().st_size for f in SHIPPED.rglob("*.safetensors")]
    assert sizes and sum(sizes) <= 20 * 2**20 and not list(SHIPPED.rglob("*.bin"))
    pipe = load_pipeline({"name": cfg.name, "pipeline": cfg.pipeline, "local_path": str(SHIPPED)},
                         torch.device("cpu"), torch.float32)
    scheduler = pipe.scheduler.config
    assert type(pipe).__name__ == "PixArtSigmaPipeline" and type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert (scheduler.algorithm_type, scheduler.solver_order, scheduler.prediction_type) == ("dpmsolver++", 2, "epsilon")
    assert pipe.transformer.config.out_channels == 2 * pipe.transformer.config.in_channels  # learned sigma
    assert (cfg.steps, cfg.guidance_scale) == (20, 4.5)  # PixArt-Sigma's, as conf/model/pixart_sigma.yaml


@pytest.mark.slow
def test_the_shipped_pixart_model_run_completes_offline(tmp_path):
    proc = run("tiny_pixart_shapes", f"output_root={tmp_path}")
    metrics = default_outputs(proc, tmp_path, images=16, name="tiny_pixart_shapes-shapes-cat")
    assert 0.3 < metrics["macs_reduction"] < 0.6, metrics  # CAT's 6 warm-up steps of 20, then 30% of the tokens
    assert metrics["adherence_full"] > 0.1, metrics  # trained: its card scores the full model 0.17 and chance 0.07
