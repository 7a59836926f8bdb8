"""The training script's PixArt architecture (`scripts/train_tiny.py --arch pixart`): the T5-style tokenizer
the pipeline masks, the variance term of its loss, its low-resolution positions, and a short resumable run."""

import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scripts.train_tiny as train

SCENE_VAE = Path(__file__).resolve().parents[3] / "assets" / "tiny-sd3-scenes" / "vae"


def tiny_pixart(data):
    tokenizer = train.build_tokenizer(data, "pixart")
    encoders, transformer = train.build_models(len(tokenizer), data, Namespace(arch="pixart", layers=1, heads=1))
    return train.make_pipeline("pixart", tokenizer, encoders, train.build_vae(data), transformer)


def test_the_pixart_tokenizer_is_t5_shaped_and_the_pipeline_masks_its_padding():
    data = train.scenes_data()
    pipe = tiny_pixart(data)
    tok = pipe.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token) == (0, 1, None)
    caption = data.prompts()[0]
    ids = tok(caption).input_ids
    assert ids[-1] == 1 and 0 not in ids and len(ids) <= data.max_tokens
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        [caption], device=torch.device("cpu"), **{"max_sequence_length": data.max_tokens})
    assert embeds.shape == (1, data.max_tokens, pipe.text_encoder.config.d_model) == negative.shape
    assert mask.sum().item() == len(ids) and negative_mask.sum().item() == 1  # the empty caption: its end token
    assert pipe.transformer.config.out_channels == 2 * pipe.transformer.config.in_channels  # learned sigma


def test_the_variance_term_vanishes_at_the_true_posterior_and_only_trains_the_variance():
    scheduler = tiny_pixart(train.scenes_data()).scheduler
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 1, 500, 999])
    abar = scheduler.alphas_cumprod[t][:, None, None, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    posterior = -torch.ones_like(x0)  # f = 0: the posterior variance betatilde_t
    assert train.variance_bound(scheduler, x0, xt, t, noise, posterior).abs().item() < 1e-6
    variance = torch.zeros_like(x0, requires_grad=True)
    eps = noise + 0.1 * torch.randn(noise.shape, generator=gen)
    loss = train.variance_bound(scheduler, x0, xt, t, eps, variance)
    loss.backward()
    assert loss.item() > 0 and variance.grad[0].abs().sum() == 0  # t = 0 is left out
    assert train.variance_bound(scheduler, x0[:1], xt[:1], t[:1], eps[:1], variance[:1]).item() == 0


def test_pixart_low_resolution_tokens_lie_on_the_full_grid():
    """A 2x pooled latent's tokens get sin-cos positions spread over the full grid (token (i, j) at the
    full-resolution patch (2i, 2j)), so the curriculum needs no position trick for PixArt."""
    pipe = tiny_pixart(train.scenes_data())
    embed = pipe.transformer.pos_embed
    torch.nn.init.zeros_(embed.proj.weight)
    torch.nn.init.zeros_(embed.proj.bias)
    with torch.no_grad():
        full = embed(torch.zeros(1, 4, 64, 64)).reshape(32, 32, -1)
        low = embed(torch.zeros(1, 4, 32, 32)).reshape(16, 16, -1)
    torch.testing.assert_close(low, full[::2, ::2])


def test_pixart_options_are_checked_before_training(tmp_path):
    args = ["--data", "scenes", "--out", str(tmp_path / "model"), "--state", str(tmp_path / "state")]
    with pytest.raises(SystemExit, match="--timestep-shift is for --arch sd3"):
        train.main(args + ["--arch", "pixart", "--timestep-shift", "3"])
    with pytest.raises(SystemExit, match="holds no AutoencoderKL"):
        train.main(args + ["--arch", "pixart", "--vae-from", str(tmp_path / "nothing")])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "training.json").write_text(json.dumps({"arch": "pixart"}))
    with pytest.raises(SystemExit, match="holds a pixart model"):
        train.main(args + ["--arch", "sd3", "--resume"])


def test_pixart_training_saves_a_pixart_sigma_pipeline_and_resumes(tmp_path):
    """A few seconds of training on tiny settings with the scene VAE frozen: the saved folder is a
    PixArtSigmaPipeline in safetensors that keeps the VAE, and --resume knows the architecture."""
    out, state = tmp_path / "model", tmp_path / "state"
    args = ["--data", "scenes", "--out", str(out), "--state", str(state), "--images", "24", "--layers", "1",
            "--heads", "1", "--batch", "2", "--minutes", "0.03", "--save-every", "10", "--eval-prompts", "1",
            "--threads", "1"]
    train.main(args + ["--arch", "pixart", "--vae-from", str(SCENE_VAE)])
    info = json.loads((out / "training.json").read_text())
    assert info["arch"] == "pixart" and info["vae_from"] == str(SCENE_VAE)
    assert "heldout_adherence_20_steps_guidance_4.5" in info
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "PixArtSigmaPipeline"
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    saved, given = (load_file(folder / "diffusion_pytorch_model.safetensors") for folder in (out / "vae", SCENE_VAE))
    assert saved.keys() == given.keys() and all(torch.equal(saved[k], given[k]) for k in given)  # frozen
    train.main(args + ["--resume", "--low-res-share", "0.5", "--bf16"])
    again = json.loads((out / "training.json").read_text())
    assert again["arch"] == "pixart" and len(again["stages"]) == 2 and again["stages"][1]["low_res_share"] == 0.5


def test_the_cpu_clock_spends_the_budget_only_as_fast_as_the_job_gets_the_cpu(monkeypatch):
    """`--cpu-clock`: on a busy machine a low-priority job's steps take longer in wall-clock time but not
    in the CPU time it gets, and that is what it counts (over its threads)."""
    cpu = [100.0]
    monkeypatch.setattr(train.time, "process_time", lambda: cpu[0])
    clock = train.TrainingClock(seconds=5.0, source=train.cpu_seconds(2))
    for _ in range(4):  # four steps of 1 s on both threads, however long they took on the wall
        cpu[0] += 2.0
        clock.tick()
    assert clock.seconds == 9.0
    cpu[0] += 6.0  # an evaluation at a save
    clock.skip()
    cpu[0] += 2.0
    assert clock.tick() == 10.0


def test_the_pixart_model_card_is_written_as_the_sd3_models_cards(tmp_path, monkeypatch):
    """`--card-only` on a saved PixArt model: the sections and score rows of the shipped SD3 scene model's
    card (held-out adherence of the full model and of CAT at its defaults for the model's step count, chance,
    renders), and what is PixArt's own: pipeline, learned sigma, T5 encoder, DDPM objective, the frozen VAE and
    every stage's command."""
    import dataclasses

    data = train.scenes_data()
    out = tmp_path / "tiny-pixart-scenes"
    torch.manual_seed(0)
    tiny_pixart(data).save_pretrained(out, safe_serialization=True)
    stages = [{"steps": 450, "minutes": 120.0, "lr": 5e-4, "low_res_share": 0.75, "low_res_batch": 32, "bf16": True},
              {"steps": 900, "minutes": 110.0, "lr": 5e-4, "low_res_share": 0.75, "low_res_batch": 32, "bf16": True,
               "cpu_clock": True}]
    (out / "training.json").write_text(json.dumps({
        "data": "scenes", "arch": "pixart", "vae_from": "assets/tiny-sd3-scenes/vae", "steps": 1350, "minutes": 230.0,
        "stages": stages, "threads": 2, "seed": 0, "layers": 1, "heads": 1, "batch": 16, "images": 20000}))
    monkeypatch.setitem(train.SAMPLING, "pixart", {"steps": 4, "guidance": 4.5})  # CAT's warm-up: 2 of 4
    scores = train.write_card(out, dataclasses.replace(data, prompts=lambda: data.prompts()[:2]))
    card = (out / "README.md").read_text()
    shipped = (SCENE_VAE.parent / "README.md").read_text()

    def outline(text):  # the front matter, the section headings and each table row's first cell
        return [line.split("|")[1].strip() if line.startswith("|") else line
                for line in text.splitlines() if line.startswith(("---", "## ", "|"))]

    assert outline(card) == outline(shipped) and len(scores) == 4
    for name, value in scores.items():
        assert f"| {name.replace('_', ' ')} | {value:.3f} |" in card
    for fact in ("PixArt-Sigma architecture", "`PixArtSigmaPipeline`", "max_sequence_length=48", "Learned sigma",
                 "T5EncoderModel", "DDPM epsilon", "DPMSolverMultistepScheduler", "4 steps, guidance 4.5",
                 "taken frozen from `assets/tiny-sd3-scenes/vae`", "--cpu-clock` (900 steps, 110 min)",
                 "--arch pixart --vae-from assets/tiny-sd3-scenes/vae --images 20000 --batch 16 --layers 1 --heads 1",
                 "1350 steps of batch 16", "CPU time it got", "2 held-out prompts"):
        assert fact in card, fact
