"""Train an embedded model from scratch on the CPU: a small SD3-architecture text-to-image model
for one of the procedural grammars.

    python scripts/train_tiny.py --data shapes --out assets/tiny-sd3-shapes --minutes 45
    python scripts/train_tiny.py --data scenes --out assets/tiny-sd3-scenes --minutes 120 --threads 2
    python scripts/train_tiny.py --data scenes --out assets/tiny-sd3-scenes --resume --minutes 60

`shapes` (the default model): 64x64 pixels, 1-2 objects, 16x16 = 256 image tokens.
`scenes`: 128x128 pixels, 2-4 objects on textured backgrounds, 32x32 = 1024 image tokens.

Stages: render a captioned data set; train a small AutoencoderKL (RGB -> 4 latent channels at half
the side); train two tiny CLIP text encoders and an SD3Transformer2DModel (patch 2) jointly with
rectified flow matching, the SD3 objective; keep an EMA of the weights; save a diffusers
StableDiffusion3Pipeline folder (safetensors) every few minutes and at the end. Training resumes
from the last save with `--resume` (the VAE, tokenizer and EMA weights of --out), so an interrupted
run loses at most --save-every minutes; every stage is appended to training.json and the log.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Data:
    """A grammar to train on: captions of a split, how to draw one, and how to judge images."""

    name: str
    image_size: int
    max_tokens: int
    words: Callable[[], list[str]]
    captions: Callable[[str, int, int], list[str]]  # (split, n, seed)
    render: Callable[[str, int, int], np.ndarray]  # (caption, size, seed)
    adherence: Callable
    prompts: Callable[[], list[str]]  # the bundled held-out prompts
    about: str  # one paragraph for the model card


def shapes_data() -> Data:
    from experiments.prompts.shapes import adherence, grammar, load_prompts
    from experiments.prompts.shapes.render import render

    return Data(
        "shapes", 64, 16,
        words=lambda: sorted({w for s in grammar.all_scenes() for w in grammar.caption(s).split()}),
        captions=lambda split, n, seed: [grammar.caption(s) for s in grammar.sample_scenes(grammar.split(split), n, seed)],
        render=lambda text, size, seed: render(grammar.parse(text), size, seed=seed),
        adherence=adherence, prompts=load_prompts,
        about='captions of one or two coloured shapes (`experiments/prompts/shapes`: "a large red circle on the left", '
              '"a small blue square above a large green triangle", "three yellow circles")',
    )


def scenes_data() -> Data:
    from experiments.prompts.scenes import adherence, grammar, load_prompts
    from experiments.prompts.scenes.render import render

    return Data(
        "scenes", 128, 48, words=grammar.vocabulary,
        captions=lambda split, n, seed: [grammar.caption(s) for s in grammar.sample_scenes(split, n, seed)],
        render=lambda text, size, seed: render(grammar.parse(text), size, seed=seed),
        adherence=adherence, prompts=load_prompts,
        about="captions of two to four coloured shapes, each at a named cell of a 3x3 grid, on a plain, striped "
              'or checkered background (`experiments/prompts/scenes`: "a large red circle at the top left, a small blue '
              'square in the center and a large green triangle at the bottom right, on a striped background")',
    )


DATASETS = {"shapes": shapes_data, "scenes": scenes_data}


def build_tokenizer(data: Data):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = data.words()
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
        pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=data.max_tokens,
    )


def build_models(vocab_size: int, data: Data, args):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    def text_encoder():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=data.max_tokens, projection_dim=64,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
        ))

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=data.image_size, mid_block_add_attention=False,
    )
    transformer = SD3Transformer2DModel(
        sample_size=data.image_size // 2, patch_size=2, in_channels=4, num_layers=args.layers, attention_head_dim=32,
        num_attention_heads=args.heads, joint_attention_dim=128, caption_projection_dim=32 * args.heads,
        pooled_projection_dim=128, out_channels=4, pos_embed_max_size=data.image_size // 2,
    )
    return text_encoder(), text_encoder(), vae, transformer


def render_dataset(data: Data, n: int, seed: int):
    """uint8 pixels [n, 3, side, side] (kept as bytes: 20k scenes at 128x128 are 1 GB) and captions."""
    captions = data.captions("train", n, seed)
    images = np.stack([data.render(c, data.image_size, seed * 1_000_003 + i) for i, c in enumerate(captions)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


def train_vae(vae, pixels, steps: int, log):
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        batch = as_float(pixels[torch.randint(len(pixels), (16,))])
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
    return torch.cat([vae.encode(as_float(pixels[i:i + 128])).latent_dist.mean for i in range(0, len(pixels), 128)])


def make_pipeline(tokenizer, te1, te2, vae, transformer, shift: float = 1.0):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
        text_encoder=te1, tokenizer=tokenizer, text_encoder_2=te2, tokenizer_2=copy.deepcopy(tokenizer),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(pipe, data: Data, prompts, steps: int, guidance: float, seed: int = 0) -> float:
    images = []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i:i + 16]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=data.image_size, width=data.image_size, max_sequence_length=0).images
    return data.adherence(images, prompts)


def recorded_stages(info: dict) -> list[dict]:
    """The training stages a training.json records; models saved before --resume existed hold one."""
    if "stages" in info:
        return info["stages"]
    return [{"steps": info["steps"], "minutes": info["minutes"]}] if "steps" in info else []


def write_card(out: Path, data: Data, steps: int = 28, guidance: float = 5.0) -> dict:
    """Scores the saved model on the bundled held-out prompts and writes its model card (README.md)."""
    import cat
    from experiments.prompts.shapes import load_pipeline

    pipe = load_pipeline(out)
    prompts = data.prompts()
    side, tokens = data.image_size, (data.image_size // 4) ** 2
    clusters = 8 if tokens <= 256 else 16

    def images(handle_config=None):
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        call = dict(num_inference_steps=steps, guidance_scale=guidance, height=side, width=side,
                    max_sequence_length=0, generator=gens)
        if handle_config is None:
            return pipe(prompts, **call).images
        with cat.apply(pipe, handle_config):
            return pipe(prompts, **call).images

    full = images()
    from experiments.base.config_files import default_setting

    reference = cat.METHODS[str(default_setting("paired_reference"))]  # the method the model card reports
    cat_images = images(reference(num_clusters=clusters))
    truth = [data.render(p, side, i) for i, p in enumerate(prompts)]
    scores = {
        "full_model": data.adherence(full, prompts),
        f"cat_paper_defaults_{clusters}_clusters": data.adherence(cat_images, prompts),
        "chance_shuffled_prompts": data.adherence(full, prompts[1:] + prompts[:1]),
        "ground_truth_renders": data.adherence(truth, prompts),
    }
    info = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    size_mb = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    base = f"python scripts/train_tiny.py --data {data.name} --out assets/{out.name}"
    base += "".join(f" --{key} {info[key]}" for key, default in (("images", 12000), ("batch", 32))
                    if info.get(key, default) != default)
    commands = []
    for i, st in enumerate(recorded_stages(info)):
        flags = " --resume" if i else ""
        flags += f" --lr {st['lr']:g}" if i and "lr" in st else ""
        if st.get("low_res_share"):
            flags += f" --low-res-share {st['low_res_share']:g} --low-res-batch {st['low_res_batch']}"
        flags += f" --timestep-shift {st['timestep_shift']:g}" if st.get("timestep_shift") else ""
        flags += " --bf16" if st.get("bf16") else ""
        commands.append(f"`{base}{flags}` ({st['steps']} steps, {st['minutes']:g} min{' with the VAE' if not i else ''})")
    stages_text = ", then ".join(commands) or f"`{base}`"
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in scores.items())
    grid = data.image_size // 4
    (out / "README.md").write_text(f"""---
library_name: diffusers
pipeline_tag: text-to-image
---
# {out.name}

A small text-to-image diffusion transformer of the Stable Diffusion 3 architecture, trained from
scratch on the CPU on a procedural data set (`experiments/prompts/{data.name}`), so that CAT's token dynamics
can be seen on a machine with no GPU and no network.

- Pipeline: `StableDiffusion3Pipeline` (load with `text_encoder_3=None, tokenizer_3=None`; call with
  `max_sequence_length=0`, {side}x{side} pixels). Weights: safetensors, {size_mb:.1f} MB in all.
- Transformer: `SD3Transformer2DModel`, {info.get('layers', '?')} joint blocks, hidden {32 * int(info.get('heads', 3))}, patch 2 on \
{side // 2}x{side // 2} latents ({grid}x{grid} = {grid * grid} image tokens), {data.max_tokens} text tokens.
- Text encoders: two word-level CLIP text models (3 layers, hidden 64), trained jointly.
- VAE: `AutoencoderKL`, 2 levels (16, 32 channels), 4 latent channels, trained first (MSE + small KL).
- Objective: rectified flow matching as in SD3 (logit-normal timesteps, velocity target), 10% caption
  dropout for classifier-free guidance, EMA of the weights; scheduler
  `FlowMatchEulerDiscreteScheduler(shift={pipe.scheduler.config.shift:g})` (each stage's timestep shift is in its command).
- Data: {info.get('images', '?')} renders of {data.about}; the bundled prompts
  (`experiments/prompts/{data.name}/heldout_prompts.txt`, {len(prompts)} captions) were never seen in training.
- Training: {stages_text}; {info.get('steps', '?')} steps of batch {info.get('batch', '?')},
  {info.get('minutes', '?')} minutes in all on 2 shared CPU cores, seed {info.get('seed', 0)}. Log: `training_log.txt`.

## Scores

Prompt adherence from the weight-free judge of `experiments.prompts.{data.name}` (colour segmentation and
geometry; 1.0 = every check passes), on the {len(prompts)} held-out prompts, {steps} steps, guidance
{guidance}, seed i for prompt i:

| images | adherence |
|---|---|
{rows}

`chance` scores the full model's images against the next prompt's caption (the level a model that
ignores its prompt would reach); `ground truth` scores renders of the captions themselves.
""")
    return scores


def cached_latents(args, vae, pixels, log, latents=None) -> torch.Tensor:
    """The VAE's latents of the training set, kept in the state folder so a resumed run skips encoding
    (keyed by the data set and a digest of the VAE weights); `latents` given: store them."""
    import hashlib

    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    key = f"{args.data}-{args.images}-{args.seed}-{digest.hexdigest()[:16]}"
    path = state_dir(args) / f"latents-{key}.safetensors"
    if latents is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob("latents-*.safetensors"):
            old.unlink()
        save_file({"latents": latents.contiguous()}, path)
        return latents
    if path.exists():
        log(f"latents from {path}")
        return load_file(path)["latents"]
    latents = encode_latents(vae, pixels)
    return cached_latents(args, vae, pixels, log, latents)


@contextlib.contextmanager
def pooled_positions(embed, factor: int):
    """While active, the patch embedding takes latents pooled `factor` times: each token gets the mean of
    the positional embeddings of the full-resolution patches it covers, so it keeps its place in the image
    (without this SD3's embedding would crop the centre of its grid, and a low-resolution image would
    learn the positions of a small central window)."""
    full = embed.cropped_pos_embed

    def cropped(height, width):
        grid = full(height * factor, width * factor)
        h, w, dim = height // embed.patch_size, width // embed.patch_size, grid.shape[-1]
        return grid.reshape(1, h, factor, w, factor, dim).mean(dim=(2, 4)).reshape(1, h * w, dim)

    embed.cropped_pos_embed = cropped
    try:
        yield
    finally:
        del embed.cropped_pos_embed


class TrainingClock:
    """Seconds spent training: wall-clock time between ticks, except a gap far longer than the
    typical one (the job was paused, e.g. with SIGSTOP while something else was timed), which counts
    as one typical interval."""

    def __init__(self, seconds: float = 0.0, pause: float = 120.0):
        self.seconds, self.pause, self.last, self.typical = seconds, pause, time.time(), None

    def tick(self) -> float:
        now = time.time()
        gap, self.last = now - self.last, now
        if gap > self.pause and self.typical is not None:
            gap = self.typical
        elif gap > 0.01:
            self.typical = gap if self.typical is None else 0.9 * self.typical + 0.1 * gap
        self.seconds += gap
        return self.seconds

    def skip(self) -> None:
        self.last = time.time()


def state_dir(args) -> Path:
    """Where the unfinished stage's raw weights and optimizer moments live (not shipped)."""
    return args.state or Path("outputs") / "train_state" / args.out.name


def claim_state(args):
    """An exclusive lock on the state folder, held until the process ends, so that a second run on the
    same model (say, a --resume started while the first is still going) stops at once instead of
    overwriting the first one's checkpoints."""
    import fcntl

    folder = state_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / "lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another training run holds {folder} (training {args.out}); wait for it or stop it") from None
    return handle


# A stage's own options (with their defaults): kept in the training state, so an interrupted stage
# continues with them.
STAGE_OPTIONS = {"low_res_share": 0.0, "low_res_batch": None, "bf16": False, "timestep_shift": 1.0}


def save_state(args, params, opt, step: int, stage_seconds: float, final: bool) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{i}": p.detach().contiguous() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{key}"] = value.detach().reshape(value.shape).contiguous()
    folder = state_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "state.safetensors.tmp")
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    meta = {"step": step, "stage_seconds": stage_seconds, "budget_minutes": args.minutes, "lr": args.lr,
            **{name: getattr(args, name) for name in STAGE_OPTIONS}, "final": final}
    (folder / "state.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_state(args, params, opt) -> dict | None:
    """The unfinished stage to continue, restoring raw weights and optimizer moments; None if the
    last stage finished (or no state was kept)."""
    from safetensors.torch import load_file

    folder = state_dir(args)
    if not (folder / "state.json").exists():
        return None
    meta = json.loads((folder / "state.json").read_text())
    if meta["final"]:
        return None
    tensors = load_file(folder / "state.safetensors")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"])
            moments = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
            if moments:
                opt.state[p] = moments
    return meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATASETS), default="shapes", help="the grammar to train on")
    p.add_argument("--card-only", action="store_true", help="only score the model in --out and write its card")
    p.add_argument("--out", type=Path, default=None, help="default: assets/tiny-sd3-<data>")
    p.add_argument("--state", type=Path, default=None,
                   help="folder for the resumable training state (default outputs/train_state/<out name>)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training-time budget of the transformer stage (default 45; time spent in training steps: "
                        "a paused job (SIGSTOP) and the evaluations at saves do not spend it; on --resume of an "
                        "interrupted stage, default: that stage's own budget, and a value given here replaces it)")
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--low-res-share", type=float, default=0.0,
                   help="fraction of steps trained on 2x average-pooled latents (a quarter of the tokens, their "
                        "positions pooled alike): a resolution curriculum that learns layout and colour several "
                        "times faster per image; the held-out score is always taken at full resolution")
    p.add_argument("--low-res-batch", type=int, default=None, help="batch of the low-resolution steps (default 2 x --batch)")
    p.add_argument("--timestep-shift", type=float, default=1.0,
                   help="SD3's timestep shift s, t -> s t / (1 + (s - 1) t), for the training timesteps and the saved "
                        "sampler alike: s > 1 trains more at high noise, where a larger image decides its layout "
                        "(SD3 scales s with the square root of the token count)")
    p.add_argument("--bf16", action="store_true",
                   help="run the training forward passes under bfloat16 autocast (weights, optimizer and EMA stay "
                        "float32): about 1.3x more steps a minute on CPUs with AMX or AVX512-BF16")
    p.add_argument("--save-every", type=float, default=6.0, help="minutes between checkpoints")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out captions scored at every save")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue from --out: an interrupted stage goes on where its last save left it (raw "
                        "weights, optimizer, step, schedule); after a finished stage a new one starts from the "
                        "EMA weights with --minutes and --lr")
    args = p.parse_args(argv)
    if not 0.0 <= args.low_res_share <= 1.0:
        raise SystemExit(f"--low-res-share must be in [0, 1], got {args.low_res_share}")
    if not args.timestep_shift > 0:
        raise SystemExit(f"--timestep-shift must be positive, got {args.timestep_shift}")
    data = DATASETS[args.data]()
    if not args.resume:
        args.minutes = args.minutes or 45.0
    args.out = args.out or Path("assets") / f"tiny-sd3-{args.data}"
    torch.set_num_threads(args.threads)
    if args.card_only:
        print(json.dumps(write_card(args.out, data), indent=2))
        return

    args.state_lock = claim_state(args)  # held for the life of the process
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
        from experiments.prompts.shapes import load_pipeline

        saved = load_pipeline(args.out)
        tokenizer, te1, te2, vae, transformer = (
            saved.tokenizer, saved.text_encoder, saved.text_encoder_2, saved.vae, saved.transformer)
        previous = json.loads((args.out / "training.json").read_text())
        args.layers, args.heads = previous["layers"], previous["heads"]
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "training_log.txt").write_text("")
        tokenizer = build_tokenizer(data)
        te1, te2, vae, transformer = build_models(len(tokenizer), data, args)
    pixels, captions = render_dataset(data, args.images, args.seed)
    log(f"rendered {len(pixels)} training images ({data.name}, {data.image_size}x{data.image_size})")
    if args.resume:
        latents = cached_latents(args, vae, pixels, log)
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    else:
        train_vae(vae, pixels, args.vae_steps, log)
        latents = encode_latents(vae, pixels)  # [n, 4, side / 2, side / 2]
        shift, scale = latents.mean().item(), 1.0 / latents.std().item()
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        cached_latents(args, vae, pixels, log, latents)
    latents = (latents - shift) * scale
    vae.requires_grad_(False)
    del pixels
    log(f"latents {tuple(latents.shape)}, shift {shift:.4f}, scale {scale:.4f}")

    pipe = make_pipeline(tokenizer, te1, te2, vae, transformer, args.timestep_shift)
    ema = [copy.deepcopy(m).requires_grad_(False) for m in (transformer, te1, te2)]
    params = [*transformer.parameters(), *te1.parameters(), *te2.parameters()]
    log(f"trainable parameters: {sum(p.numel() for p in params) / 1e6:.2f} M")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step, done_seconds = 0, 0.0
    if args.resume:
        unfinished = load_state(args, params, opt)
        if unfinished:  # the interrupted stage goes on: same schedule, budget and learning rate
            step, done_seconds = unfinished["step"], unfinished["stage_seconds"]
            args.minutes = args.minutes or unfinished["budget_minutes"]
            args.lr = unfinished["lr"]
            for name, default in STAGE_OPTIONS.items():
                setattr(args, name, unfinished.get(name, default))
            previous = {**previous, "stages": recorded_stages(previous)[:-1]}
            log(f"continuing the interrupted stage at step {step} ({done_seconds / 60:.1f} of {args.minutes:g} min)")
        else:
            args.minutes = args.minutes or 45.0
            log(f"new stage after {previous['steps']} steps, from the EMA weights")
    for m in (transformer, te1, te2):
        m.train()

    args.low_res_batch = args.low_res_batch or 2 * args.batch
    low_latents = F.avg_pool2d(latents, 2) if args.low_res_share else None
    heldout = data.captions("heldout", args.eval_prompts, 1)
    budget, last_save = args.minutes * 60, time.time()
    clock = TrainingClock(done_seconds)
    while True:
        elapsed = clock.tick()
        lr = args.lr * min(1.0, (step + 1) / 300) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        for group in opt.param_groups:
            group["lr"] = lr
        low_res = args.low_res_share > 0 and random.random() < args.low_res_share
        idx = torch.randint(len(latents), (args.low_res_batch if low_res else args.batch,))
        x0 = (low_latents if low_res else latents)[idx]
        texts = ["" if random.random() < 0.1 else captions[i] for i in idx.tolist()]
        t = torch.sigmoid(torch.randn(len(idx)))  # logit-normal timesteps, as SD3
        t = args.timestep_shift * t / (1 + (args.timestep_shift - 1) * t)
        noise = torch.randn_like(x0)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
        with (torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16),
              pooled_positions(transformer.pos_embed, 2) if low_res else contextlib.nullcontext()):
            prompt_embeds, _, pooled_text, _ = pipe.encode_prompt(
                texts, texts, None, device=torch.device("cpu"), do_classifier_free_guidance=False, max_sequence_length=0
            )
            pred = transformer(hidden_states=xt, encoder_hidden_states=prompt_embeds, pooled_projections=pooled_text,
                               timestep=t * 1000, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise - x0)
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
        done = clock.tick() > budget
        if done or time.time() - last_save > args.save_every * 60:
            stage_seconds = clock.tick()
            save(args, data, tokenizer, vae, ema, heldout, step, stage_seconds, log, log_lines, final=done,
                 previous=previous)
            save_state(args, params, opt, step, stage_seconds, final=done)
            for m in (transformer, te1, te2):
                m.train()
            last_save = time.time()
            clock.skip()  # the save and its evaluation are not training time
        if done:
            break


def save(args, data, tokenizer, vae, ema, heldout, step, seconds, log, log_lines, final: bool, previous: dict) -> None:
    transformer, te1, te2 = (m.eval() for m in ema)
    pipe = make_pipeline(tokenizer, te1, te2, vae, transformer, args.timestep_shift)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    for config in args.out.glob("*/config.json"):  # a resumed model would record the machine's local path
        fields = json.loads(config.read_text())
        if fields.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    score = evaluate(pipe, data, heldout, steps=20, guidance=5.0)
    stage = {"steps": step, "minutes": round(seconds / 60, 1), "lr": args.lr}
    if args.low_res_share:
        stage |= {"low_res_share": args.low_res_share, "low_res_batch": args.low_res_batch}
    if args.bf16:
        stage["bf16"] = True
    if args.timestep_shift != 1.0:
        stage["timestep_shift"] = args.timestep_shift
    stages = recorded_stages(previous) + [stage]
    info = {"data": data.name, "steps": sum(s["steps"] for s in stages),
            "minutes": round(sum(s["minutes"] for s in stages), 1),
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
