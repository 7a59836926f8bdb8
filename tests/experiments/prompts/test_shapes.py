"""The shapes grammar, its renderer and judge, and the shipped default model."""

import numpy as np
import pytest
import torch

from experiments.prompts import shapes
from experiments.prompts.shapes import grammar
from experiments.prompts.shapes.judge import judge, judge_scene
from experiments.prompts.shapes.render import render


def test_captions_round_trip_and_bad_captions_are_refused():
    for scene in grammar.all_scenes()[::97]:
        assert grammar.parse(grammar.caption(scene)) == scene
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        grammar.parse("a photo of a cat")
    with pytest.raises(ValueError, match="unknown colour"):
        grammar.parse("a large pink circle on the left")


def test_heldout_prompts_never_appear_in_training():
    train = {grammar.caption(s) for s in grammar.split("train")}
    heldout = shapes.load_prompts()
    assert len(heldout) == 64 and not set(heldout) & train
    assert {grammar.parse(p).kind for p in heldout} == {"place", "relation", "count"}


def test_judge_scores_ground_truth_high_and_mismatches_low():
    scenes = grammar.sample_scenes(grammar.split("heldout"), 60, seed=1)
    truth = [judge_scene(render(s, 64, seed=i), s)["score"] for i, s in enumerate(scenes)]
    wrong = [judge_scene(render(s, 64, seed=i), scenes[(i + 7) % len(scenes)])["score"] for i, s in enumerate(scenes)]
    noise = [judge_scene(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8), s)["score"]
             for i, s in enumerate(scenes[:20])]
    assert np.mean(truth) > 0.95
    assert np.mean(wrong) < 0.3 and np.mean(noise) < 0.1


def test_judge_aspects():
    img = render(grammar.parse("a large red circle on the left"), 64, seed=0)
    assert judge(img, "a large red circle on the left") == {
        "color": True, "shape": True, "count": True, "size": True, "position": True, "score": 1.0}
    moved = judge(img, "a large red circle on the right")
    assert moved["position"] is False and moved["score"] == 0.75
    assert judge(img, "a large red square on the left")["shape"] is False
    assert judge(img, "two red circles")["count"] is False


@pytest.mark.skipif(not (shapes.DEFAULT_MODEL_DIR / "model_index.json").exists(), reason="the default model is not in assets/")
def test_shipped_model_loads_offline_and_beats_chance():
    pipe = shapes.load_pipeline()
    prompts = shapes.load_prompts()[:12]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, height=64, width=64,
                  generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
                  **shapes.PIPELINE_KWARGS).images
    score = shapes.adherence(images, prompts)
    chance = shapes.adherence(images, prompts[1:] + prompts[:1])
    assert score > 0.5 and score > chance + 0.3, (score, chance)
