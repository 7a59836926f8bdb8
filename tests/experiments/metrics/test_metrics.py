"""Metrics on small data made in the test: CLIP score (tiny random CLIP), FID (small extractor), fidelity."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.metrics import clip_score, fid, fidelity


def _images(n, seed=0, size=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _save(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.png")


def test_fidelity_identical_and_different():
    a, b = _images(3, 0), _images(3, 1)
    same = fidelity.fidelity(a, a)
    assert same["ssim"] == pytest.approx(1.0) and same["psnr"] > 80
    diff = fidelity.fidelity(a, b)
    assert diff["psnr"] < 12 and diff["ssim"] < 0.2 and len(diff["per_image"]["psnr"]) == 3
    with pytest.raises(ValueError, match="paired images"):
        fidelity.fidelity(a, _images(3, 0, size=16))


def test_fidelity_cli(tmp_path, capsys):
    _save(tmp_path / "a", _images(2, 0))
    _save(tmp_path / "b", _images(2, 0))
    fidelity.main(["--images", str(tmp_path / "a"), "--ref", str(tmp_path / "b")])
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 2 and out["ssim"] == pytest.approx(1.0)


def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    from cat.testing import tiny_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=64, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(config).eval(), tiny_tokenizer()


def test_clip_score_with_a_tiny_random_clip():
    model, tok = _tiny_clip()
    scorer = clip_score.ClipScorer("transformers", model_obj=model, tokenizer=tok, device="cpu", batch_size=2)
    images, prompts = _images(3), ["a red circle", "a blue square", "a cat"]
    scores = scorer.score(images, prompts)
    assert scores.shape == (3,) and (scores >= 0).all() and (scores <= 100).all()
    # the score is 100 x cosine, clamped at 0
    img, txt = scorer._embed(images, prompts)
    assert torch.allclose(scores, (100 * (img * txt).sum(-1)).clamp(min=0))
    assert torch.equal(scores, scorer.score(images, prompts))
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images, prompts[:2])


def test_clip_preprocessing_is_resize_crop_normalise():
    x = clip_score.preprocess([np.full((40, 80, 3), 255, np.uint8)], 32)
    assert x.shape == (1, 3, 32, 32)
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor(clip_score.CLIP_MEAN)) / torch.tensor(clip_score.CLIP_STD))


def test_clip_backend_errors_are_clear():
    with pytest.raises(ValueError, match="allowed: open_clip, transformers"):
        clip_score.ClipScorer("nope")


class SmallExtractor(torch.nn.Module):
    """A fixed random feature extractor standing in for Inception-v3 (no weights to download)."""

    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 8 * 8, 8)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x.float() / (255 if x.dtype == torch.uint8 else 1), size=(8, 8))
        return self.proj(x.flatten(1))


def test_fid_with_a_small_extractor_and_a_cached_reference(tmp_path):
    ref = tmp_path / "ref"
    _save(ref, _images(40, 0))
    same = fid.fid(_images(40, 0), str(ref), feature=SmallExtractor(), size=None, cache_dir=tmp_path / "cache")
    other = fid.fid([np.zeros((32, 32, 3), np.uint8) + i for i in range(40)], str(ref), feature=SmallExtractor(),
                    size=None, cache_dir=tmp_path / "cache")
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    assert other["fid"] > same["fid"] + 0.1
    assert same["num_images"] == 40 and same["num_reference"] == 40
    assert len(list((tmp_path / "cache").glob("fid_ref_*.pt"))) == 1  # computed once, then reused


def test_clip_score_cli_with_a_local_transformers_clip(tmp_path, capsys):
    model, tok = _tiny_clip()
    model.save_pretrained(tmp_path / "clip", safe_serialization=True)
    tok.save_pretrained(tmp_path / "clip")
    _save(tmp_path / "images", _images(2))
    (tmp_path / "records.jsonl").write_text(
        '{"index": 0, "prompt": "a red circle"}\n{"index": 1, "prompt": "a blue square"}\n')
    clip_score.main(["--images", str(tmp_path / "images"), "--prompts", str(tmp_path / "records.jsonl"),
                     "--backend", "transformers", "--model", str(tmp_path / "clip")])
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 2 and 0 <= out["clip_score"] <= 100 and out["backbone"].startswith("transformers:")


def test_fid_cli_runs_the_same_code(tmp_path, capsys, monkeypatch):
    from torchmetrics.image.fid import FrechetInceptionDistance

    _save(tmp_path / "a", _images(12, 0))
    _save(tmp_path / "b", _images(12, 1))
    monkeypatch.setattr(fid, "_metric", lambda feature, weights: FrechetInceptionDistance(
        feature=SmallExtractor(), normalize=True, reset_real_features=False))
    fid.main(["--images", str(tmp_path / "a"), "--ref", str(tmp_path / "b"), "--cache", str(tmp_path / "cache")])
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 12 and out["num_reference"] == 12 and out["fid"] > 0


def test_image_reward_is_wired_into_the_metrics_behind_its_extra(tmp_path, monkeypatch):
    """With the extra missing the run stops before loading a model; with a scorer (here a stub) every image
    gets its reward, and the run reports the means with their intervals."""
    from experiments.base.config_files import ConfigError
    from experiments.lifecycle import launch
    from experiments.metrics import imagereward

    args = ["debug=tiny", "data.limit=2", "metrics.latency.enabled=false", "metrics.macs=false",
            "metrics.image_reward.enabled=true", f"output_root={tmp_path}"]
    monkeypatch.setattr(imagereward, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[imagereward\]'"):
        launch.run(*args)
    assert not (tmp_path / "full_images").exists()

    class Stub:
        def score(self, prompt, image):
            return len(prompt) / 10 + image.getpixel((0, 0))[0] / 255

    monkeypatch.setattr(imagereward, "available", lambda: True)
    monkeypatch.setattr(imagereward, "load", lambda model, device=None: Stub())
    run_dir, metrics = launch.run(*args)
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert all("image_reward" in r for r in records)
    for key in ("image_reward", "image_reward_full"):
        rewards = [r["image_reward"] for r in records if (r["variant"] == "full") == key.endswith("_full")]
        assert metrics[key] == pytest.approx(sum(rewards) / len(rewards))
        assert metrics[f"{key}_lo"] <= metrics[key] <= metrics[f"{key}_hi"]
