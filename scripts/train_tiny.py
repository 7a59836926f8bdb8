"""Train an embedded model from scratch on the CPU: a small text-to-image diffusion transformer of
the SD3 or the PixArt-Sigma architecture for one of the procedural grammars.

    python scripts/train_tiny.py --data shapes --out assets/tiny-sd3-shapes --minutes 45
    python scripts/train_tiny.py --data scenes --out assets/tiny-sd3-scenes --minutes 120 --threads 2
    python scripts/train_tiny.py --data scenes --out assets/tiny-sd3-scenes --resume --minutes 60
    python scripts/train_tiny.py --arch pixart --data scenes --vae-from assets/tiny-sd3-scenes/vae --minutes 60

`shapes` (the default model): 64x64 pixels, 1-2 objects, 16x16 = 256 image tokens.
`scenes`: 128x128 pixels, 2-4 objects on textured backgrounds, 32x32 = 1024 image tokens.

Stages: render a captioned data set; train a small AutoencoderKL (RGB -> 4 latent channels at half
the side), or take a trained one frozen (--vae-from); train the text encoder(s) and the transformer
(patch 2) jointly with the architecture's own objective, keeping an EMA of the weights:
- `--arch sd3`: two tiny CLIP text encoders and an SD3Transformer2DModel, rectified flow matching;
  saved as a StableDiffusion3Pipeline.
- `--arch pixart`: a tiny T5 encoder and a PixArtTransformer2DModel (AdaLN-single, cross-attention to
  the text, learned sigma), DDPM epsilon prediction with IDDPM's hybrid loss; saved as a
  PixArtSigmaPipeline with its DPM-Solver sampler.
A diffusers pipeline folder (safetensors) is saved every few minutes and at the end. Training resumes
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


def build_tokenizer(data: Data, arch: str):
    """A word-level tokenizer over the grammar's words: CLIP's special tokens (start and end of text)
    for SD3, T5's (padding 0, end of text 1, unknown 2; no start token) for PixArt."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>") if arch == "sd3" else (None, "</s>", "<pad>")
    specials = [pad, eos, "<unk>"] if arch == "pixart" else [bos, eos, "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in data.words():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = f"{bos} $A {eos}" if bos else f"$A {eos}"
    tok.post_processor = TemplateProcessing(
        single=single, special_tokens=[(t, vocab[t]) for t in (bos, eos) if t]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>",
        model_max_length=data.max_tokens,
    )


def build_vae(data: Data):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=data.image_size, mid_block_add_attention=False,
    )


def build_models(vocab_size: int, data: Data, args) -> tuple[list[torch.nn.Module], torch.nn.Module]:
    """The text encoders and the transformer of `args.arch`, freshly initialised."""
    if args.arch == "pixart":
        return build_pixart_models(vocab_size, data, args)
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    def text_encoder():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=data.max_tokens, projection_dim=64,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
        ))

    transformer = SD3Transformer2DModel(
        sample_size=data.image_size // 2, patch_size=2, in_channels=4, num_layers=args.layers, attention_head_dim=32,
        num_attention_heads=args.heads, joint_attention_dim=128, caption_projection_dim=32 * args.heads,
        pooled_projection_dim=128, out_channels=4, pos_embed_max_size=data.image_size // 2,
    )
    return [text_encoder(), text_encoder()], transformer


def build_pixart_models(vocab_size: int, data: Data, args):
    """A T5 v1.1-style encoder (gated GELU, relative position buckets; 3 layers, width 128) and a
    PixArtTransformer2DModel shaped as PixArt-Sigma's (conf/model/pixart_sigma.yaml): AdaLN-single,
    cross-attention to the T5 states, approximate-GELU feed-forward, no size conditions, and learned
    sigma (out_channels = 2 x 4: epsilon and the interpolation of IDDPM's learned-range variance)."""
    from diffusers import PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    text_encoder = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=128, d_kv=32, d_ff=256, num_layers=3, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    transformer = PixArtTransformer2DModel(
        sample_size=data.image_size // 2, patch_size=2, in_channels=4, out_channels=8, num_layers=args.layers,
        attention_head_dim=32, num_attention_heads=args.heads, cross_attention_dim=32 * args.heads,
        caption_channels=text_encoder.config.d_model, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False, interpolation_scale=1,
    )
    return [text_encoder], transformer


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


def make_pipeline(arch: str, tokenizer, encoders, vae, transformer, shift: float = 1.0):
    """The diffusers pipeline of `arch` with the sampler it is trained for: SD3's flow-matching Euler
    sampler with the training's timestep shift; PixArt-Sigma's DPM-Solver++ (2nd order) over the
    1000-step DDPM schedule with linear betas, epsilon prediction (its released scheduler config)."""
    from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, PixArtSigmaPipeline,
                           StableDiffusion3Pipeline)

    if arch == "pixart":
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
            prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
        )
        pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=encoders[0], vae=vae, transformer=transformer,
                                   scheduler=scheduler)
    else:
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
            text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
            tokenizer_2=copy.deepcopy(tokenizer), text_encoder_3=None, tokenizer_3=None,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_saved(arch: str, out: Path):
    """The pipeline saved in `out`, offline, from safetensors."""
    if arch == "sd3":
        from experiments.prompts.shapes import load_pipeline

        return load_pipeline(out)
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(out, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Each architecture's sampling settings, as its model config (conf/model/tiny_*.yaml) runs it: the model
# card scores with these; the held-out score at every save takes 20 steps and the same guidance.
SAMPLING = {"sd3": {"steps": 28, "guidance": 5.0}, "pixart": {"steps": 20, "guidance": 4.5}}


def call_kwargs(arch: str, data: Data) -> dict:
    """What a pipeline call of these models needs. SD3: no T5, so its CLIP tokens only. PixArt: its T5
    tokens (padded to the grammar's longest caption, masked), no rescaling to the aspect-ratio bins of a
    512-pixel model, and no caption cleaning (it needs bs4 and ftfy, and would change the trained text)."""
    if arch == "sd3":
        return {"max_sequence_length": 0}
    return {"max_sequence_length": data.max_tokens, "use_resolution_binning": False, "clean_caption": False}


def evaluate(pipe, arch: str, data: Data, prompts, steps: int, guidance: float, seed: int = 0) -> float:
    images = []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i:i + 16]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=data.image_size, width=data.image_size, **call_kwargs(arch, data)).images
    return data.adherence(images, prompts)


def recorded_stages(info: dict) -> list[dict]:
    """The training stages a training.json records; models saved before --resume existed hold one."""
    if "stages" in info:
        return info["stages"]
    return [{"steps": info["steps"], "minutes": info["minutes"]}] if "steps" in info else []


def write_card(out: Path, data: Data) -> dict:
    """Scores the saved model on the bundled held-out prompts and writes its model card (README.md)."""
    import cat

    info = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    arch = info.get("arch", "sd3")
    steps, guidance = SAMPLING[arch]["steps"], SAMPLING[arch]["guidance"]
    pipe = load_saved(arch, out)
    prompts = data.prompts()
    side, tokens = data.image_size, (data.image_size // 4) ** 2
    clusters = 8 if tokens <= 256 else 16

    def images(handle_config=None):
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        call = dict(num_inference_steps=steps, guidance_scale=guidance, height=side, width=side, generator=gens,
                    **call_kwargs(arch, data))
        if handle_config is None:
            return pipe(prompts, **call).images
        with cat.apply(pipe, handle_config):
            return pipe(prompts, **call).images

    full = images()
    from experiments.base.config_files import default_setting

    # the method the model card reports, at its step-dependent defaults for this model's steps, as a run sets them
    reference = cat.METHODS[str(default_setting("paired_reference"))]
    cat_images = images(reference(num_clusters=clusters, **reference.for_steps(steps)))
    truth = [data.render(p, side, i) for i, p in enumerate(prompts)]
    scores = {
        "full_model": data.adherence(full, prompts),
        f"cat_paper_defaults_{clusters}_clusters": data.adherence(cat_images, prompts),
        "chance_shuffled_prompts": data.adherence(full, prompts[1:] + prompts[:1]),
        "ground_truth_renders": data.adherence(truth, prompts),
    }
    size_mb = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    base = f"python scripts/train_tiny.py --data {data.name} --out assets/{out.name}"
    base += f" --arch {arch}" if arch != "sd3" else ""
    base += f" --vae-from {info['vae_from']}" if info.get("vae_from") else ""
    base += "".join(f" --{key} {info[key]}" for key, default in (("images", 12000), ("batch", 32), ("layers", 6),
                                                                  ("heads", 3))
                    if key in info and info[key] != default)
    commands = []
    for i, st in enumerate(recorded_stages(info)):
        flags = " --resume" if i else ""
        flags += f" --lr {st['lr']:g}" if i and "lr" in st else ""
        if st.get("low_res_share"):
            flags += f" --low-res-share {st['low_res_share']:g} --low-res-batch {st['low_res_batch']}"
        flags += f" --timestep-shift {st['timestep_shift']:g}" if st.get("timestep_shift") else ""
        flags += " --bf16" if st.get("bf16") else ""
        flags += " --cpu-clock" if st.get("cpu_clock") else ""
        first = " with the VAE" if not i and not info.get("vae_from") else ""
        commands.append(f"`{base}{flags}` ({st['steps']} steps, {st['minutes']:g} min{first})")
    stages_text = ", then ".join(commands) or f"`{base}`"
    clock_note = (" (a `--cpu-clock` stage's minutes are the CPU time it got over its threads)"
                  if any(st.get("cpu_clock") for st in recorded_stages(info)) else "")
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in scores.items())
    grid = data.image_size // 4
    layers, hidden = info.get("layers", "?"), 32 * int(info.get("heads", 3))
    tokens_text = f"patch 2 on {side // 2}x{side // 2} latents ({grid}x{grid} = {grid * grid} image tokens)"
    vae = ("`AutoencoderKL`, 2 levels (16, 32 channels), 4 latent channels, "
           + (f"taken frozen from `{info['vae_from']}` (trained on the same renders; not retrained)"
              if info.get("vae_from") else "trained first (MSE + small KL)") + ".")
    if arch == "pixart":
        title = "PixArt-Sigma"
        about = f"""- Pipeline: `PixArtSigmaPipeline` (call with `max_sequence_length={data.max_tokens}, use_resolution_binning=False,
  clean_caption=False`, {side}x{side} pixels). Weights: safetensors, {size_mb:.1f} MB in all.
- Transformer: `PixArtTransformer2DModel`, {layers} blocks (self-attention, cross-attention to the text,
  feed-forward; AdaLN-single timestep modulation), hidden {hidden}, {tokens_text},
  up to {data.max_tokens} T5 tokens (masked padding). Learned sigma: 8 output channels, epsilon and variance.
- Text encoder: a word-level T5 encoder (`T5EncoderModel`, 3 layers, width 128, gated GELU), trained jointly.
- VAE: {vae}
- Objective: DDPM epsilon prediction over the 1000-step linear-beta schedule with uniform timesteps, plus
  IDDPM's variational term for the learned (range-interpolated) variance with the mean held fixed, the
  loss PixArt-Sigma is trained with; 10% caption dropout (the empty caption) for classifier-free
  guidance, EMA of the weights. Sampler: `DPMSolverMultistepScheduler` (DPM-Solver++, 2nd order,
  epsilon), {steps} steps, guidance {guidance}. The pipeline drops the variance channels before the
  solver; they are kept, and trained, so that the transformer is shaped as PixArt-Sigma's (the channel
  layout every token method sees: CAT scores the noise channels only)."""
    else:
        title = "Stable Diffusion 3"
        about = f"""- Pipeline: `StableDiffusion3Pipeline` (load with `text_encoder_3=None, tokenizer_3=None`; call with
  `max_sequence_length=0`, {side}x{side} pixels). Weights: safetensors, {size_mb:.1f} MB in all.
- Transformer: `SD3Transformer2DModel`, {layers} joint blocks, hidden {hidden}, {tokens_text}, \
{data.max_tokens} text tokens.
- Text encoders: two word-level CLIP text models (3 layers, hidden 64), trained jointly.
- VAE: {vae}
- Objective: rectified flow matching as in SD3 (logit-normal timesteps, velocity target), 10% caption
  dropout for classifier-free guidance, EMA of the weights; scheduler
  `FlowMatchEulerDiscreteScheduler(shift={pipe.scheduler.config.shift:g})` (each stage's timestep shift is in its command)."""
    (out / "README.md").write_text(f"""---
library_name: diffusers
pipeline_tag: text-to-image
---
# {out.name}

A small text-to-image diffusion transformer of the {title} architecture, trained from
scratch on the CPU on a procedural data set (`experiments/prompts/{data.name}`), so that CAT's token dynamics
can be seen on a machine with no GPU and no network.

{about}
- Data: {info.get('images', '?')} renders of {data.about}; the bundled prompts
  (`experiments/prompts/{data.name}/heldout_prompts.txt`, {len(prompts)} captions) were never seen in training.
- Training: {stages_text}; {info.get('steps', '?')} steps of batch {info.get('batch', '?')},
  {info.get('minutes', '?')} minutes in all on 2 shared CPU cores{clock_note}, seed {info.get('seed', 0)}. Log: `training_log.txt`.

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
    as one typical interval. `source` is the time it reads: wall-clock by default; `cpu_seconds` counts
    only the CPU time the job got, so a job slowed down by other work on the machine spends its budget
    as slowly as it trains."""

    def __init__(self, seconds: float = 0.0, pause: float = 120.0, source: Callable[[], float] | None = None):
        self.source = source or time.time
        self.seconds, self.pause, self.last, self.typical = seconds, pause, self.source(), None

    def tick(self) -> float:
        now = self.source()
        gap, self.last = now - self.last, now
        if gap > self.pause and self.typical is not None:
            gap = self.typical
        elif gap > 0.01:
            self.typical = gap if self.typical is None else 0.9 * self.typical + 0.1 * gap
        self.seconds += gap
        return self.seconds

    def skip(self) -> None:
        self.last = self.source()


def cpu_seconds(threads: int) -> Callable[[], float]:
    """The process's CPU time over its thread count: a second of it is a second of the job's threads all
    at work (on a quiet machine, close to wall-clock time)."""
    return lambda: time.process_time() / threads


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
STAGE_OPTIONS = {"low_res_share": 0.0, "low_res_batch": None, "bf16": False, "timestep_shift": 1.0,
                 "cpu_clock": False}


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


def sd3_loss(pipe, transformer, x0, texts, args, data: Data, low_res: bool) -> torch.Tensor:
    """Rectified flow matching, SD3's objective: logit-normal timesteps (shifted by --timestep-shift),
    x_t = (1 - t) x_0 + t noise, velocity target noise - x_0."""
    t = torch.sigmoid(torch.randn(len(x0)))  # logit-normal timesteps, as SD3
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
    return F.mse_loss(pred.float(), noise - x0)


def pixart_loss(pipe, transformer, x0, texts, args, data: Data, low_res: bool) -> torch.Tensor:
    """PixArt-Sigma's objective: DDPM over the sampler's own 1000-step schedule, uniform timesteps,
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, epsilon target, plus the variational term that trains
    the learned variance (`variance_bound`). A low-resolution batch needs no position trick: PixArt's patch
    embedding lays a smaller grid's sin-cos positions over the full grid's span (its `base_size`)."""
    scheduler = pipe.scheduler
    t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),))
    noise = torch.randn_like(x0)
    abar = scheduler.alphas_cumprod[t][:, None, None, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        prompt_embeds, mask, _, _ = pipe.encode_prompt(
            texts, do_classifier_free_guidance=False, device=torch.device("cpu"), max_sequence_length=data.max_tokens
        )
        out = transformer(xt, encoder_hidden_states=prompt_embeds, encoder_attention_mask=mask, timestep=t,
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    eps, variance = out.float().chunk(2, dim=1)  # [B, 4, h, w] each
    return F.mse_loss(eps, noise) + variance_bound(scheduler, x0, xt, t, eps.detach(), variance)


def variance_bound(scheduler, x0, xt, t, eps, variance) -> torch.Tensor:
    """IDDPM's L_vlb for a learned-range variance, in bits per dimension (added with weight 1 at 1000
    steps, as PixArt-alpha/PixArt-sigma@9ba985e, diffusion/model/gaussian_diffusion.py,
    `GaussianDiffusion.training_losses` / `_vb_terms_bpd`): KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    p's mean from the given (detached) epsilon, so only the variance learns from it, and its log-variance
    log beta_t * f + log betatilde_t * (1 - f), f = (variance + 1) / 2. The t = 0 term, a discretized
    likelihood of 8-bit pixels, is left out: x_0 are latents."""
    betas, abar = scheduler.betas, scheduler.alphas_cumprod
    abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
    posterior = betas * (1 - abar_prev) / (1 - abar)  # betatilde_t; 0 at t = 0, so its log is clipped there

    def at(values):
        return values[t][:, None, None, None]  # [B, 1, 1, 1]

    log_posterior = at(torch.cat([posterior[1:2], posterior[1:]]).log())
    x0_pred = (xt - at((1 - abar).sqrt()) * eps) / at(abar.sqrt())
    mean_gap = at(betas * abar_prev.sqrt() / (1 - abar)) * (x0 - x0_pred)  # posterior mean - model mean
    frac = (variance + 1) / 2
    log_var = frac * at(betas.log()) + (1 - frac) * log_posterior
    kl = 0.5 * (log_var - log_posterior - 1 + (log_posterior - log_var).exp() + mean_gap**2 * (-log_var).exp())
    return (kl.mean(dim=(1, 2, 3)) / math.log(2.0) * (t > 0)).mean()


LOSSES = {"sd3": sd3_loss, "pixart": pixart_loss}


def latent_shift(arch: str, vae) -> float:
    """The shift of the model's latent normalisation (x - shift) * scale: SD3's pipeline undoes the VAE's
    shift_factor, PixArt's only its scaling_factor."""
    return (vae.config.shift_factor or 0.0) if arch == "sd3" else 0.0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATASETS), default="shapes", help="the grammar to train on")
    p.add_argument("--arch", choices=sorted(LOSSES), default=None,
                   help="the transformer architecture (default sd3; on --resume, the saved model's)")
    p.add_argument("--card-only", action="store_true", help="only score the model in --out and write its card")
    p.add_argument("--out", type=Path, default=None, help="default: assets/tiny-<arch>-<data>")
    p.add_argument("--state", type=Path, default=None,
                   help="folder for the resumable training state (default outputs/train_state/<out name>)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training-time budget of the transformer stage (default 45; time spent in training steps: "
                        "a paused job (SIGSTOP) and the evaluations at saves do not spend it; on --resume of an "
                        "interrupted stage, default: that stage's own budget, and a value given here replaces it)")
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-from", type=Path, default=None,
                   help="an AutoencoderKL folder (safetensors) to use frozen instead of training one, e.g. "
                        "assets/tiny-sd3-scenes/vae for the scene grammar")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--low-res-share", type=float, default=0.0,
                   help="fraction of steps trained on 2x average-pooled latents (a quarter of the tokens, each "
                        "at its place in the full grid): a resolution curriculum that learns layout and colour several "
                        "times faster per image; the held-out score is always taken at full resolution")
    p.add_argument("--low-res-batch", type=int, default=None, help="batch of the low-resolution steps (default 2 x --batch)")
    p.add_argument("--timestep-shift", type=float, default=1.0,
                   help="SD3's timestep shift s, t -> s t / (1 + (s - 1) t), for the training timesteps and the saved "
                        "sampler alike: s > 1 trains more at high noise, where a larger image decides its layout "
                        "(SD3 scales s with the square root of the token count); sd3 only")
    p.add_argument("--bf16", action="store_true",
                   help="run the training forward passes under bfloat16 autocast (weights, optimizer and EMA stay "
                        "float32): about 1.3x more steps a minute on CPUs with AMX or AVX512-BF16")
    p.add_argument("--cpu-clock", action="store_true",
                   help="count --minutes in the CPU time the job gets (over --threads) instead of wall-clock time: "
                        "on a shared machine a low-priority job then trains as long as asked, however slowly")
    p.add_argument("--save-every", type=float, default=6.0, help="minutes between checkpoints (wall-clock)")
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
    args.out = args.out or Path("assets") / f"tiny-{args.arch or 'sd3'}-{args.data}"
    previous = {}
    if args.resume or args.card_only:
        previous = json.loads((args.out / "training.json").read_text()) if (args.out / "training.json").exists() else {}
        saved_arch = previous.get("arch", "sd3")
        if args.arch not in (None, saved_arch):
            raise SystemExit(f"--arch {args.arch} but {args.out} holds a {saved_arch} model; leave --arch out on --resume")
        args.arch = saved_arch
    args.arch = args.arch or "sd3"
    if args.arch == "pixart" and args.timestep_shift != 1.0:
        raise SystemExit("--timestep-shift is for --arch sd3 (flow matching); pixart trains on DDPM's uniform timesteps")
    if args.vae_from and not (args.vae_from / "config.json").exists():
        raise SystemExit(f"--vae-from {args.vae_from} holds no AutoencoderKL (no config.json)")
    if not args.resume:
        args.minutes = args.minutes or 45.0
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

    if args.resume:
        saved = load_saved(args.arch, args.out)
        tokenizer, vae, transformer = saved.tokenizer, saved.vae, saved.transformer
        encoders = [saved.text_encoder] + ([saved.text_encoder_2] if args.arch == "sd3" else [])
        args.layers, args.heads = previous["layers"], previous["heads"]
        args.vae_from = previous.get("vae_from")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "training_log.txt").write_text("")
        tokenizer = build_tokenizer(data, args.arch)
        if args.vae_from:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(args.vae_from, use_safetensors=True, local_files_only=True)
        else:
            vae = build_vae(data)  # first: the seeded initialisation order of the shipped SD3 models
        encoders, transformer = build_models(len(tokenizer), data, args)
    pixels, captions = render_dataset(data, args.images, args.seed)
    log(f"rendered {len(pixels)} training images ({data.name}, {data.image_size}x{data.image_size})")
    if args.resume or args.vae_from:
        latents = cached_latents(args, vae, pixels, log)
    else:
        train_vae(vae, pixels, args.vae_steps, log)
        latents = encode_latents(vae, pixels)  # [n, 4, side / 2, side / 2]
        if args.arch == "sd3":
            vae.register_to_config(shift_factor=latents.mean().item())
        vae.register_to_config(scaling_factor=1.0 / latents.std().item())
        cached_latents(args, vae, pixels, log, latents)
    shift, scale = latent_shift(args.arch, vae), vae.config.scaling_factor
    latents = (latents - shift) * scale
    vae.requires_grad_(False)
    del pixels
    log(f"latents {tuple(latents.shape)}, shift {shift:.4f}, scale {scale:.4f}")

    pipe = make_pipeline(args.arch, tokenizer, encoders, vae, transformer, args.timestep_shift)
    trained = [transformer, *encoders]
    ema = [copy.deepcopy(m).requires_grad_(False) for m in trained]
    params = [p for m in trained for p in m.parameters()]
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
    for m in trained:
        m.train()

    args.low_res_batch = args.low_res_batch or 2 * args.batch
    low_latents = F.avg_pool2d(latents, 2) if args.low_res_share else None
    heldout = data.captions("heldout", args.eval_prompts, 1)
    budget, last_save = args.minutes * 60, time.time()
    clock = TrainingClock(done_seconds, source=cpu_seconds(args.threads) if args.cpu_clock else None)
    while True:
        elapsed = clock.tick()
        lr = args.lr * min(1.0, (step + 1) / 300) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        for group in opt.param_groups:
            group["lr"] = lr
        low_res = args.low_res_share > 0 and random.random() < args.low_res_share
        idx = torch.randint(len(latents), (args.low_res_batch if low_res else args.batch,))
        x0 = (low_latents if low_res else latents)[idx]
        texts = ["" if random.random() < 0.1 else captions[i] for i in idx.tolist()]
        loss = LOSSES[args.arch](pipe, transformer, x0, texts, args, data, low_res)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for model, shadow in zip(trained, ema):
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
            for m in trained:
                m.train()
            last_save = time.time()
            clock.skip()  # the save and its evaluation are not training time
        if done:
            break


def save(args, data, tokenizer, vae, ema, heldout, step, seconds, log, log_lines, final: bool, previous: dict) -> None:
    transformer, *encoders = (m.eval() for m in ema)
    pipe = make_pipeline(args.arch, tokenizer, encoders, vae, transformer, args.timestep_shift)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    for config in args.out.glob("*/config.json"):  # a resumed model would record the machine's local path
        fields = json.loads(config.read_text())
        if fields.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    guidance = SAMPLING[args.arch]["guidance"]
    score = evaluate(pipe, args.arch, data, heldout, steps=20, guidance=guidance)
    stage = {"steps": step, "minutes": round(seconds / 60, 1), "lr": args.lr}
    if args.low_res_share:
        stage |= {"low_res_share": args.low_res_share, "low_res_batch": args.low_res_batch}
    if args.bf16:
        stage["bf16"] = True
    if args.cpu_clock:
        stage["cpu_clock"] = True
    if args.timestep_shift != 1.0:
        stage["timestep_shift"] = args.timestep_shift
    stages = recorded_stages(previous) + [stage]
    info = {"data": data.name, **({"arch": args.arch} if args.arch != "sd3" else {}),
            **({"vae_from": str(args.vae_from)} if args.vae_from else {}),
            "steps": sum(s["steps"] for s in stages), "minutes": round(sum(s["minutes"] for s in stages), 1),
            "stages": stages, "threads": args.threads, "seed": args.seed,
            "layers": args.layers, "heads": args.heads, "batch": args.batch, "images": args.images,
            f"heldout_adherence_20_steps_guidance_{guidance:g}": round(score, 4), "final": final}
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    with open(args.out / "training_log.txt", "a") as f:
        f.write("\n".join(log_lines) + "\n")
    log_lines.clear()
    log(f"saved {args.out} at step {step}: held-out adherence {score:.3f}")


if __name__ == "__main__":
    main()
