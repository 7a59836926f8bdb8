"""Train the embedded default model from scratch on the CPU: a small SD3-architecture text-to-image
model for the procedural shapes grammar (experiments/shapes).

    python scripts/train_tiny.py --out assets/tiny-sd3-shapes --minutes 45

Stages: render a captioned data set; train a small AutoencoderKL (64x64 RGB -> 4x32x32 latents);
train two tiny CLIP text encoders and an SD3Transformer2DModel (16x16 image tokens) jointly with
rectified flow matching, the SD3 objective; keep an EMA of the weights; save a diffusers
StableDiffusion3Pipeline folder (safetensors) every few minutes and at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.shapes import grammar  # noqa: E402
from experiments.shapes.render import render  # noqa: E402

IMAGE_SIZE = 64
MAX_TOKENS = 16


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in grammar.all_scenes() for w in grammar.caption(s).split()})
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for word in words:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=MAX_TOKENS,
    )


def build_models(vocab_size: int, args):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    def text_encoder():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
        ))

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
    )
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=4, num_layers=args.layers, attention_head_dim=32,
        num_attention_heads=args.heads, joint_attention_dim=128, caption_projection_dim=32 * args.heads,
        pooled_projection_dim=128, out_channels=4, pos_embed_max_size=IMAGE_SIZE // 2,
    )
    return text_encoder(), text_encoder(), vae, transformer


def render_dataset(n: int, seed: int):
    scenes = grammar.sample_scenes(grammar.split("train"), n, seed)
    images = np.stack([render(s, IMAGE_SIZE, seed=seed * 1_000_003 + i) for i, s in enumerate(scenes)])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [n, 3, 64, 64]
    return pixels, [grammar.caption(s) for s in scenes]


def train_vae(vae, pixels, steps: int, log):
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        batch = pixels[torch.randint(len(pixels), (16,))]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.5f}")
    vae.eval()


@torch.no_grad()
def encode_latents(vae, pixels):
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])


def make_pipeline(tokenizer, te1, te2, vae, transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae,
        text_encoder=te1, tokenizer=tokenizer, text_encoder_2=te2, tokenizer_2=copy.deepcopy(tokenizer),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(pipe, prompts, steps: int, guidance: float, seed: int = 0) -> float:
    from experiments.shapes import adherence

    images = []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i:i + 16]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=IMAGE_SIZE, width=IMAGE_SIZE, max_sequence_length=0).images
    return adherence(images, prompts)


def recorded_stages(info: dict) -> list[dict]:
    """The training stages a training.json records; models saved before --resume existed hold one."""
    if "stages" in info:
        return info["stages"]
    return [{"steps": info["steps"], "minutes": info["minutes"]}] if "steps" in info else []


def write_card(out: Path, steps: int = 28, guidance: float = 5.0) -> dict:
    """Scores the saved model on the bundled held-out prompts and writes its model card (README.md)."""
    import cat
    from experiments.shapes import adherence, load_pipeline, load_prompts
    from experiments.shapes.grammar import parse

    pipe = load_pipeline(out)
    prompts = load_prompts()

    def images(handle_config=None):
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        call = dict(num_inference_steps=steps, guidance_scale=guidance, height=IMAGE_SIZE, width=IMAGE_SIZE,
                    max_sequence_length=0, generator=gens)
        if handle_config is None:
            return pipe(prompts, **call).images
        with cat.apply(pipe, handle_config):
            return pipe(prompts, **call).images

    full = images()
    cat_images = images(cat.CATConfig(num_clusters=8))
    truth = [render(parse(p), IMAGE_SIZE, seed=i) for i, p in enumerate(prompts)]
    scores = {
        "full_model": adherence(full, prompts),
        "cat_paper_defaults_8_clusters": adherence(cat_images, prompts),
        "chance_shuffled_prompts": adherence(full, prompts[1:] + prompts[:1]),
        "ground_truth_renders": adherence(truth, prompts),
    }
    info = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    size_mb = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    commands = []
    for i, st in enumerate(recorded_stages(info)):
        lr = f" --lr {st['lr']:g}" if i and "lr" in st else ""
        flag = " --resume" if i else ""
        commands.append(f"`python scripts/train_tiny.py --out assets/tiny-sd3-shapes{flag}{lr}` "
                        f"({st['steps']} steps, {st['minutes']:g} min{' with the VAE' if not i else ''})")
    stages_text = ", then ".join(commands) or "`python scripts/train_tiny.py --out assets/tiny-sd3-shapes`"
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in scores.items())
    (out / "README.md").write_text(f"""---
library_name: diffusers
pipeline_tag: text-to-image
---
# tiny-sd3-shapes

The embedded default model of cat-pruning: a small text-to-image diffusion transformer of the Stable
Diffusion 3 architecture, trained from scratch on the CPU on a procedural data set of coloured shapes
(`experiments/shapes`), so that CAT's token dynamics can be seen on a machine with no GPU and no network.

- Pipeline: `StableDiffusion3Pipeline` (load with `text_encoder_3=None, tokenizer_3=None`; call with
  `max_sequence_length=0`, 64x64 pixels). Weights: safetensors, {size_mb:.1f} MB in all.
- Transformer: `SD3Transformer2DModel`, {info.get('layers', '?')} joint blocks, hidden {32 * int(info.get('heads', 3))}, patch 2 on 32x32
  latents (16x16 = 256 image tokens), 16 text tokens.
- Text encoders: two word-level CLIP text models (3 layers, hidden 64), trained jointly.
- VAE: `AutoencoderKL`, 2 levels (16, 32 channels), 4 latent channels, trained first (MSE + small KL).
- Objective: rectified flow matching as in SD3 (logit-normal timesteps, velocity target), 10% caption
  dropout for classifier-free guidance, EMA of the weights; scheduler `FlowMatchEulerDiscreteScheduler(shift=1)`.
- Data: {info.get('images', '?')} renders of captions from the training split of the grammar ("a large red circle
  on the left", "a small blue square above a large green triangle", "three yellow circles"); the
  bundled prompts (`experiments/shapes/heldout_prompts.txt`, 64 captions) were never seen in training.
- Training: {stages_text}; {info.get('steps', '?')} steps of batch {info.get('batch', '?')},
  {info.get('minutes', '?')} minutes in all on 2 shared CPU cores, seed {info.get('seed', 0)}. Log: `training_log.txt`.

## Scores

Prompt adherence from the weight-free judge (`experiments.shapes.judge`: colour, shape, count and
position checks by colour segmentation and geometry; 1.0 = every check passes), on the 64 held-out
prompts, {steps} steps, guidance {guidance}, seed i for prompt i:

| images | adherence |
|---|---|
{rows}

`chance` scores the full model's images against the next prompt's caption. Small shapes are hard at
64x64 pixels; colour and position are learned first, shape and count later.
""")
    return scores


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card-only", action="store_true", help="only score the model in --out and write its card")
    p.add_argument("--out", type=Path, default=Path("assets/tiny-sd3-shapes"))
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget of the transformer stage")
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--save-every", type=float, default=6.0, help="minutes between checkpoints")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue training the model saved in --out (its VAE, tokenizer and EMA weights)")
    args = p.parse_args(argv)
    if args.card_only:
        torch.set_num_threads(args.threads)
        print(json.dumps(write_card(args.out), indent=2))
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    start = time.time()
    log_lines = []

    def log(msg):
        line = f"[{(time.time() - start) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    previous = {}
    if args.resume:
        from experiments.shapes import load_pipeline

        saved = load_pipeline(args.out)
        tokenizer, te1, te2, vae, transformer = (
            saved.tokenizer, saved.text_encoder, saved.text_encoder_2, saved.vae, saved.transformer)
        previous = json.loads((args.out / "training.json").read_text())
        args.layers, args.heads = previous["layers"], previous["heads"]
        log(f"resuming {args.out} after {previous['steps']} steps")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "training_log.txt").write_text("")
        tokenizer = build_tokenizer()
        te1, te2, vae, transformer = build_models(len(tokenizer), args)
    pixels, captions = render_dataset(args.images, args.seed)
    log(f"rendered {len(pixels)} training images")
    if args.resume:
        latents = encode_latents(vae, pixels)
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    else:
        train_vae(vae, pixels, args.vae_steps, log)
        latents = encode_latents(vae, pixels)  # [n, 4, 32, 32]
        shift, scale = latents.mean().item(), 1.0 / latents.std().item()
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    latents = (latents - shift) * scale
    vae.requires_grad_(False)
    del pixels
    log(f"latents {tuple(latents.shape)}, shift {shift:.4f}, scale {scale:.4f}")

    pipe = make_pipeline(tokenizer, te1, te2, vae, transformer)
    params = [*transformer.parameters(), *te1.parameters(), *te2.parameters()]
    log(f"trainable parameters: {sum(p.numel() for p in params) / 1e6:.2f} M")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = [copy.deepcopy(m).requires_grad_(False) for m in (transformer, te1, te2)]
    for m in (transformer, te1, te2):
        m.train()

    heldout = [grammar.caption(s) for s in grammar.sample_scenes(grammar.split("heldout"), 32, 1)]
    budget, step, last_save = args.minutes * 60, 0, time.time()
    stage_start = time.time()
    while True:
        elapsed = time.time() - stage_start
        lr = args.lr * min(1.0, (step + 1) / 300) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(latents), (args.batch,))
        x0 = latents[idx]
        texts = ["" if random.random() < 0.1 else captions[i] for i in idx.tolist()]
        prompt_embeds, _, pooled, _ = pipe.encode_prompt(
            texts, texts, None, device=torch.device("cpu"), do_classifier_free_guidance=False, max_sequence_length=0
        )
        t = torch.sigmoid(torch.randn(args.batch))  # logit-normal timesteps, as SD3
        noise = torch.randn_like(x0)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
        pred = transformer(hidden_states=xt, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                           timestep=t * 1000, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for model, shadow in zip((transformer, te1, te2), ema):
                for p_ema, p in zip(shadow.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        if step % 100 == 0:
            log(f"step {step} loss {loss.item():.4f} lr {lr:.2e}")
        step += 1
        done = time.time() - stage_start > budget
        if done or time.time() - last_save > args.save_every * 60:
            save(args, tokenizer, vae, ema, heldout, step, time.time() - start, log, log_lines, final=done,
                 previous=previous)
            last_save = time.time()
        if done:
            break


def save(args, tokenizer, vae, ema, heldout, step, seconds, log, log_lines, final: bool, previous: dict) -> None:
    transformer, te1, te2 = (m.eval() for m in ema)
    pipe = make_pipeline(tokenizer, te1, te2, vae, transformer)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    for config in args.out.glob("*/config.json"):  # a resumed model would record the machine's local path
        fields = json.loads(config.read_text())
        if fields.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    score = evaluate(pipe, heldout, steps=20, guidance=5.0)
    stage = {"steps": step, "minutes": round(seconds / 60, 1), "lr": args.lr}
    stages = recorded_stages(previous) + [stage]
    info = {"steps": sum(s["steps"] for s in stages), "minutes": round(sum(s["minutes"] for s in stages), 1),
            "stages": stages, "threads": args.threads, "seed": args.seed,
            "layers": args.layers, "heads": args.heads, "batch": args.batch, "images": args.images,
            "heldout_adherence_20_steps_guidance_5": round(score, 4), "final": final}
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    with open(args.out / "training_log.txt", "a") as f:
        f.write("\n".join(log_lines) + "\n")
    log_lines.clear()
    log(f"saved {args.out} at step {step}: held-out adherence {score:.3f}")


if __name__ == "__main__":
    main()
