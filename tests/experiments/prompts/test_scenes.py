"""The scenes grammar (2-4 objects at named places), its renderer and per-object judge, the scene
model's configs, and the resumable training script."""

import argparse
import json

import numpy as np
import pytest

from experiments.prompts import scenes
from experiments.prompts.scenes import grammar
from experiments.prompts.scenes.judge import judge_scene
from experiments.prompts.scenes.render import render


def test_captions_round_trip_and_bad_captions_are_refused():
    for scene in grammar.sample_scenes("train", 60, seed=3):
        assert grammar.parse(grammar.caption(scene)) == scene
        assert 2 <= len(scene.items) <= 4
    for bad, message in [
        ("a photo of a cat", "outside the scenes grammar"),
        ("a large red circle at the top left, on a plain background", "objects; allowed: 2 to 4"),
        ("a large red circle at the top left and a small red square in the center, on a plain background",
         "different colours"),
        ("a large pink circle at the top left and a small red square in the center, on a plain background",
         "unknown colour"),
        ("a large red circle at the top left and a small blue square in the center, on a wavy background",
         "unknown background"),
    ]:
        with pytest.raises(ValueError, match=message):
            grammar.parse(bad)


def test_heldout_prompts_are_balanced_and_never_in_training():
    heldout = scenes.load_prompts()
    train = {grammar.caption(s) for s in grammar.sample_scenes("train", 4000, seed=0)}
    assert len(heldout) == 64 and not set(heldout) & train
    counts = [len(grammar.parse(p).items) for p in heldout]
    assert {2, 3, 4} <= set(counts)
    assert all(grammar.is_heldout(grammar.parse(p)) for p in heldout)


def test_judge_scores_renders_high_and_other_captions_low():
    prompts = scenes.load_prompts()[:40]
    images = [render(grammar.parse(p), 128, seed=i) for i, p in enumerate(prompts)]
    assert scenes.adherence(images, prompts) > 0.97
    assert scenes.adherence(images, prompts[1:] + prompts[:1]) < 0.35
    noise = [np.random.default_rng(i).integers(0, 255, (128, 128, 3), dtype=np.uint8) for i in range(10)]
    assert scenes.adherence(noise, prompts[:10]) < 0.15


def test_judge_checks_every_object():
    text = "a large red circle at the top left and a small blue square at the bottom right, on a striped background"
    img = render(grammar.parse(text), 128, seed=0)
    result = scenes.judge(img, text)
    assert result["score"] == 1.0 and len(result["objects"]) == 2 and result["count"]
    moved = judge_scene(img, grammar.parse(text.replace("bottom right", "bottom left")))
    assert moved["objects"][1]["position"] is False and moved["objects"][0]["position"]
    reshaped = judge_scene(img, grammar.parse(text.replace("small blue square", "small blue triangle")))
    assert reshaped["objects"][1]["shape"] is False
    resized = judge_scene(img, grammar.parse(text.replace("large red", "small red")))
    assert resized["objects"][0]["size"] is False
    missing = judge_scene(img, grammar.parse(text.replace(" and a small", ", a small green triangle in the center "
                                                                          "and a small")))
    assert missing["objects"][1]["color"] is False and missing["count"] is False


def test_scene_model_configs_compose_with_their_prompts():
    from tests.experiments.tasks.test_configs import _compose

    cfg = _compose(["model=tiny_sd3_scenes"])
    assert cfg.data.name == "scenes" and cfg.model.height == 128 and cfg.model.num_clusters == 16
    assert _compose(["model=tiny_sd3_scenes", "data=parti"]).data.name == "parti"  # the command line wins
    assert _compose([]).data.name == "shapes"
    from experiments.prompts.sets import load_prompts

    assert [p.text for p in load_prompts("scenes", limit=3)] == scenes.load_prompts()[:3]


def test_clustering_and_fixes_sweeps_pair_against_the_right_cells():
    from tests.experiments.tasks.test_configs import _compose

    cfg = _compose(["sweep=clustering"], hydra=True)
    params = cfg.hydra.sweeper.params
    assert params.method == "cat,cat_no_cluster" and params["method.config.num_clusters"] == "4,8,16,20"
    assert params["method.config.keep_ratio"] == "0.1,0.2,0.3,0.4" and cfg.data.limit >= 32
    fixes = _compose(["sweep=fixes"], hydra=True)
    assert fixes.paired_reference == "method.config.legacy=[]"
    import cat

    restored = fixes.hydra.sweeper.params["method.config.legacy"].split(",")
    assert restored[0] == "[]" and {r.strip("[]") for r in restored[1:]} <= set(cat.methods.cat.LEGACY)


@pytest.mark.slow
def test_training_resumes_an_interrupted_stage(tmp_path):
    """A few seconds of training on tiny settings: the saved model is a loadable pipeline, and
    --resume continues the unfinished stage from the kept optimizer state."""
    import scripts.train_tiny as train

    out, state = tmp_path / "model", tmp_path / "state"
    args = ["--data", "scenes", "--out", str(out), "--state", str(state), "--images", "24", "--vae-steps", "2",
            "--layers", "1", "--heads", "1", "--batch", "2", "--minutes", "0.05", "--save-every", "10",
            "--eval-prompts", "1", "--threads", "1"]
    train.main(args)
    info = json.loads((out / "training.json").read_text())
    assert info["data"] == "scenes" and info["final"] and len(info["stages"]) == 1
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    meta = json.loads((state / "state.json").read_text())
    meta["final"] = False  # as if the run had been killed after its last save
    (state / "state.json").write_text(json.dumps(meta))
    train.main(args + ["--resume"])
    again = json.loads((out / "training.json").read_text())
    assert len(again["stages"]) == 1 and again["steps"] > info["steps"]  # the same stage, continued
    # the stage finished: a new one starts, with its own options
    train.main(args + ["--resume", "--low-res-share", "0.5", "--bf16", "--timestep-shift", "3"])
    stages = json.loads((out / "training.json").read_text())["stages"]
    assert len(stages) == 2 and stages[1]["low_res_share"] == 0.5 and stages[1]["low_res_batch"] == 4
    assert stages[1]["bf16"] and stages[1]["timestep_shift"] == 3.0 and not {"bf16", "timestep_shift"} & set(stages[0])
    meta = json.loads((state / "state.json").read_text())
    assert meta["bf16"] and meta["timestep_shift"] == 3.0
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["shift"] == 3.0  # sampled as trained


def test_a_second_run_on_the_same_state_or_a_bad_option_stops_before_training(tmp_path):
    import scripts.train_tiny as train

    lock = train.claim_state(argparse.Namespace(state=tmp_path / "state", out=tmp_path / "model"))
    with pytest.raises(SystemExit, match="another training run holds"):
        train.main(["--data", "scenes", "--out", str(tmp_path / "model"), "--state", str(tmp_path / "state"),
                    "--resume"])
    lock.close()
    with pytest.raises(SystemExit, match=r"--low-res-share must be in \[0, 1\], got 1.5"):
        train.main(["--data", "scenes", "--out", str(tmp_path / "model"), "--low-res-share", "1.5"])
    with pytest.raises(SystemExit, match="--timestep-shift must be positive, got 0"):
        train.main(["--data", "scenes", "--out", str(tmp_path / "model"), "--timestep-shift", "0"])


def test_low_resolution_steps_keep_each_token_at_its_place():
    """The resolution curriculum's positions: a token of a 2x pooled latent gets the mean of the
    embeddings of the four full-resolution patches it covers (not SD3's central crop), and the patch
    embedding is itself again afterwards."""
    import torch
    from diffusers import SD3Transformer2DModel

    from scripts.train_tiny import pooled_positions

    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                  num_attention_heads=1, joint_attention_dim=8, caption_projection_dim=8,
                                  pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16)
    embed = model.pos_embed
    full = embed.cropped_pos_embed(16, 16).reshape(8, 8, -1)  # the 8x8 grid of a 16x16 latent
    with pooled_positions(embed, 2):
        low = embed.cropped_pos_embed(8, 8).reshape(4, 4, -1)
        out = model(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 3, 8),
                    pooled_projections=torch.randn(1, 8), timestep=torch.tensor([500.0]), return_dict=False)[0]
    assert out.shape == (1, 4, 8, 8)
    torch.testing.assert_close(low[1, 2], full[2:4, 4:6].mean(dim=(0, 1)))
    crop = embed.cropped_pos_embed(8, 8).reshape(4, 4, -1)  # SD3's own embedding is back: the centre crop
    assert not torch.allclose(low, crop)
    torch.testing.assert_close(crop, full[2:6, 2:6])


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
@pytest.mark.skipif(not (scenes.MODEL_DIR / "model_index.json").exists(), reason="the scene model is not in assets/")
def test_shipped_scene_model_has_1024_tokens_and_beats_chance():
    import torch

    from experiments.prompts.shapes import PIPELINE_KWARGS, load_pipeline

    pipe = load_pipeline(scenes.MODEL_DIR)
    sizes = [f.stat().st_size for f in scenes.MODEL_DIR.rglob("*.safetensors")]
    assert sum(sizes) <= 20 * 2**20 and not list(scenes.MODEL_DIR.rglob("*.bin"))
    prompts = scenes.load_prompts()[:8]
    latents = []

    def grab(pipe_, step, t, kwargs):
        latents.append(kwargs["latents"].shape)
        return kwargs

    images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, height=128, width=128,
                  generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
                  callback_on_step_end=grab, **PIPELINE_KWARGS).images
    patch = pipe.transformer.config.patch_size
    assert latents[0][-2] * latents[0][-1] // patch**2 == 1024  # image tokens
    score = scenes.adherence(images, prompts)
    chance = scenes.adherence(images, prompts[1:] + prompts[:1])
    assert score > 0.5 and score > chance + 0.25, (score, chance)


def test_a_missing_embedded_model_is_a_config_error_with_the_training_command():
    from experiments.base.config_files import ConfigError
    from experiments.tasks.validation import validate
    from tests.experiments.tasks.test_configs import _compose

    with pytest.raises(ConfigError, match="train_tiny.py --data scenes"):
        validate(_compose(["model=tiny_sd3_scenes", "model.local_path=assets/no-such-model"]))


def test_the_training_budget_counts_training_time_not_pauses(monkeypatch):
    import scripts.train_tiny as train

    now = [1000.0]
    monkeypatch.setattr(train.time, "time", lambda: now[0])
    clock = train.TrainingClock(seconds=10.0)
    for _ in range(5):  # five 2-second steps
        now[0] += 2.0
        clock.tick()
    assert clock.seconds == 20.0
    now[0] += 3600.0  # paused for an hour (SIGSTOP): one typical step is counted
    assert clock.tick() == 22.0
    now[0] += 90.0  # a save with its evaluation
    clock.skip()
    now[0] += 2.0
    assert clock.tick() == 24.0
