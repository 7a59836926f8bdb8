"""MACs counted on the meta device from the real model configs."""

import pytest

import cat
from experiments.base.models import load_model_config
from experiments.run.macs import report_for_model


@pytest.fixture(scope="module")
def sd3():
    return load_model_config("sd3_medium")


def test_sd3_medium_full_model_matches_the_reference_count(sd3):
    rep = report_for_model(sd3, None)
    assert rep.transformer_macs_full / 28 == pytest.approx(8.904e12, rel=5e-3)
    assert rep.transformer_macs_full == pytest.approx(2.493e14, rel=5e-3)
    assert rep.macs_reduction == 0.0
    assert rep.text_encoder_macs > 0 and rep.vae_decode_macs > 0


@pytest.mark.slow  # end to end, about 5-17 s: CI's second step
def test_cat_at_28_and_50_steps_against_the_paper(sd3):
    r28 = report_for_model(sd3, cat.CATConfig(keep_ratio=0.3, warmup_steps=8), 28)
    r50 = report_for_model(sd3, cat.CATConfig(keep_ratio=0.3, warmup_steps=14), 50)
    print(f"SD3-medium CAT MACs reduction: {r28.macs_reduction:.3f} at 28 steps (paper ~0.5), "
          f"{r50.macs_reduction:.3f} at 50 steps (paper ~0.6)")
    assert 0.40 < r28.macs_reduction < 0.55
    assert 0.40 < r50.macs_reduction < 0.65
    assert r28.step_macs[:8] == [r28.step_macs[0]] * 8 and len(set(r28.step_macs[8:])) == 1


@pytest.mark.slow  # long: runs in CI's second step (pytest -m slow)
def test_pruned_step_macs_fall_with_keep_ratio(sd3):
    steps = [report_for_model(sd3, cat.CATConfig(keep_ratio=k, warmup_steps=2), 3).step_macs[-1] for k in (0.2, 0.5, 0.8)]
    assert steps[0] < steps[1] < steps[2]


def test_pixart_sigma_full_step():
    rep = report_for_model(load_model_config("pixart_sigma"), None, 1)
    assert rep.transformer_macs_full == pytest.approx(6.63e12, rel=5e-3)


@pytest.mark.parametrize("name", ["sd35_medium", "pixart_alpha", "flux_schnell"] + [  # the larger twins: slow
    pytest.param(n, marks=pytest.mark.slow) for n in ("sd35_large", "flux_dev")])
def test_every_family_counts_and_prunes(name):
    cfg = load_model_config(name)
    rep = report_for_model({**cfg, "macs": {**cfg["macs"], "text_encoders": None, "vae": None}},
                           cat.CATConfig(keep_ratio=0.3, warmup_steps=2), 3)
    assert rep.step_macs[-1] < rep.step_macs[0]


def test_macs_cli_prints_the_offline_count_as_json(capsys):
    import json

    from scripts import count_macs

    count_macs.main(["--json", "model=tiny_random", "model.steps=6", "method.config.warmup_steps=3"])
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["macs_reduction"] < 1 and out["transformer_macs"] < out["transformer_macs_full"]
    assert out["macs_reduction"] == pytest.approx(1 - out["transformer_macs"] / out["transformer_macs_full"])


def test_the_offline_count_is_the_same_without_autograd_and_with_the_full_step_counted_once():
    """`transformer_macs` runs the meta passes without autograd and takes the full model's step from a count made
    once per model: the counts equal a pass with autograd that counts the full step itself."""
    import json

    import torch

    from experiments.run.macs import _transformer_macs, build_on_meta, transformer_inputs

    model = load_model_config("tiny_sd3_shapes")
    config = json.loads(json.dumps(dict(model["transformer"]["config"])))
    methods = [cat.CATConfig(keep_ratio=0.4), cat.METHODS["cat_fora"](keep_ratio=0.7, warmup_steps=3),
               cat.METHODS["fora"](interval=3)]
    for method in methods:
        report = report_for_model(model, method, steps=10)
        transformer = build_on_meta(model["transformer"]["class"], config)
        inputs = transformer_inputs(transformer, 2, model["height"], model["width"], model["macs"]["text_tokens"],
                                    model["macs"]["vae_scale"])
        assert torch.is_grad_enabled()
        steps, full, _ = _transformer_macs(transformer, inputs, 10, method, True, None)
        assert (report.step_macs, report.transformer_macs_full) == (steps, sum(full)), type(method).__name__
