"""Generation: batched and cached, one seeded generator per prompt, in batches fixed by the run; the shared
cache of the full model's images; what the method reports of the run's first batch.

Prompt i of a set is always generated from `torch.Generator().manual_seed(prompt_seed(seed, i))`, on the
CPU. Batched and single generation differ in the last bits, so the batch make-up is part of the run:
the run's prompt list is cut into consecutive batches of `batch_size` once (`batches`), and a batch is
always generated whole, whether the run is resumed, sharded or spread over several processes. Images
are written as `<dir>/<index:05d>.png` and reused when present.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

import cat

from ..base.config_files import ConfigError
from ..base.files import atomic_write, clean_temporaries, lock, write_json
from ..prompts.sets import Prompt, prompts_of
from . import keys, macs as macs_
from .pipelines import compiled_blocks

log = logging.getLogger(__name__)

Batch = tuple[int, list[Prompt]]  # (batch number in the run, its prompts)


def prompt_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


# The pipeline call arguments the harness takes from the model config (argument -> model field): the run key,
# the folder names, the MAC counts, the warm-up and the tables read these fields, so the call must run them.
FROM_MODEL = {"num_inference_steps": "steps", "guidance_scale": "guidance_scale", "height": "height",
              "width": "width"}
# What every pipeline call of the harness fixes besides them, at the pipelines' own defaults (passed where the
# pipeline takes the argument): one image per prompt from the prompt's text (no embeddings, no second text),
# from its seeded generator's noise (no latents) on the scheduler's own schedule, returned as images.
PINNED = {"prompt_2": None, "prompt_3": None, "prompt_embeds": None, "pooled_prompt_embeds": None,
          "prompt_attention_mask": None, "latents": None, "timesteps": None, "sigmas": None,
          "num_images_per_prompt": 1, "output_type": "pil", "return_dict": True}


def harness_call(texts: list[str], generators: list[torch.Generator], progress=None) -> dict:
    """The arguments every pipeline call of the harness passes besides `call_kwargs` (those the pipeline takes):
    the prompts, their generators, `PINNED`, and the step callbacks that move the progress bar (`progress()` after
    every denoising step; PixArt's pipelines have the older `callback`)."""
    on_step_end = None if progress is None else lambda pipe, step, timestep, tensors: (progress(), tensors)[1]
    on_step = None if progress is None else lambda step, timestep, latents: progress()
    return {"prompt": texts, "generator": generators, **PINNED, "callback_on_step_end": on_step_end,
            "callback": on_step}


def owned_arguments() -> dict[str, str]:
    """Every pipeline argument the harness passes or takes from the model config, with where it comes from:
    `model.call_kwargs` may set none of them (the harness would run one thing and record another)."""
    owned = {name: "fixed, the same in every run" for name in harness_call([], [])}
    owned.update(prompt="from the prompt set, data", generator="from seed", latents="from seed")
    owned.update({name: f"from model.{field}: set that instead" for name, field in FROM_MODEL.items()})
    return owned


def check_call_kwargs(model) -> None:
    """Raises ConfigError for a `model.call_kwargs` key the harness passes or records itself."""
    extra = model.get("call_kwargs") or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"model.call_kwargs={extra!r} is invalid; allowed: a mapping of pipeline call arguments, "
                          "e.g. {max_sequence_length: 256}")
    owned = owned_arguments()
    for name in extra:
        if name in owned:
            raise ConfigError(f"model.call_kwargs.{name} is not allowed: the harness passes {name} itself "
                              f"({owned[name]}) and records what it passes; allowed in model.call_kwargs: the "
                              f"pipeline's other arguments (not {', '.join(sorted(owned))})")


def call_kwargs(cfg) -> dict:
    """The pipeline call of a run: steps, guidance, resolution and the model's own call arguments (none of which
    may be one the harness sets: `check_call_kwargs`)."""
    model = cfg.model
    check_call_kwargs(model)
    return {**{name: model[field] for name, field in FROM_MODEL.items()},
            **OmegaConf.to_container(model.call_kwargs or {})}


def call_pipeline(pipe, texts: list[str], generators: list[torch.Generator], kwargs: dict, progress=None):
    """`pipe(...)` as every generation and timing of the harness calls it: the prompts (the pipeline's first
    argument), the rest of `harness_call` that the pipeline names, and the run's `kwargs`, which may not repeat any
    of them (validation refuses such a `model.call_kwargs` before a model loads)."""
    accepted = inspect.signature(pipe.__call__).parameters
    fixed = {name: value for name, value in harness_call(texts, generators, progress).items()
             if name in accepted and name != "prompt"}
    repeated = sorted(set(kwargs) & set(harness_call([], [])))
    if repeated:
        raise ValueError(f"pipeline call arguments the harness sets itself: {', '.join(repeated)} "
                         "(experiments.run.generate.harness_call); they cannot come with the call's other arguments")
    return pipe(texts, **fixed, **kwargs)


def run_prompts(cfg) -> list[Prompt]:
    """The run's prompt list (its data config: set, split, file, limit, categories, shard)."""
    return prompts_of(cfg.data)


def generators(cfg, prompts: list[Prompt]) -> list[torch.Generator]:
    """One CPU generator per prompt, seeded by the run's seed and the prompt's index."""
    return [torch.Generator().manual_seed(prompt_seed(cfg.seed, p.index)) for p in prompts]


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def batches(prompts: list[Prompt], batch_size: int) -> list[Batch]:
    """The run's batches: consecutive slices of its prompt list, numbered from 0."""
    return [(start // batch_size, prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]


def run_batch(pipe, batch: list[Prompt], seed: int, call_kwargs: dict, progress=None) -> list:
    """The images of one batch (PIL), each prompt from its own seeded generator."""
    generators = [torch.Generator().manual_seed(prompt_seed(seed, p.index)) for p in batch]
    return call_pipeline(pipe, [p.text for p in batch], generators, call_kwargs, progress).images


def generate(pipe, work: list[Batch], folder: Path, seed: int, call_kwargs: dict, overwrite: bool = False,
             on_batch=None, desc: str = "generate", macs: bool = False, redo=None) -> int:
    """Generates every unfinished batch of `work` (all with `overwrite`) into `folder`, whole, writing the
    images that are missing; returns how many batches were generated.

    A batch is finished when its images exist and, with `macs`, its line of `folder/macs.jsonl` does
    (experiments/run/macs.py: each pipeline call runs under a `MacsMeter`, and the batch's transformer MACs are
    appended after its images, so a line says its batch is complete and counted); `redo(number, batch)`
    names a further reason to generate a batch again (what the caller records of it is missing). A batch
    generated again reproduces the images it has, so every image and its count come from one call.

    `on_batch(number, batch, images)` is called after each generated batch.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = macs_.read_batch_records(folder) if macs else {}

    def finished(number: int, batch: list[Prompt]) -> bool:
        return (all(image_path(folder, p.index).exists() for p in batch)
                and (not macs or macs_.counted(lines, number, [p.index for p in batch]))
                and not (redo is not None and redo(number, batch)))

    todo = [(n, batch) for n, batch in work if overwrite or not finished(n, batch)]
    steps = call_kwargs.get("num_inference_steps") or 0
    # in denoising steps, not batches: a batch of a large model takes minutes
    bar = tqdm(total=len(todo) * steps, desc=desc, unit="step", disable=not todo, leave=False)
    with bar, macs_.MacsMeter(pipe.transformer) if macs and todo else contextlib.nullcontext() as meter:
        for i, (number, batch) in enumerate(todo):
            bar.set_postfix_str(f"batch {i + 1}/{len(todo)}")
            images = run_batch(pipe, batch, seed, call_kwargs, progress=lambda: bar.update(1))
            batch_macs = meter.take() if macs else None
            for prompt, image in zip(batch, images):
                path = image_path(folder, prompt.index)
                if overwrite or not path.exists():  # a batch resumed whole reproduces the images it has
                    atomic_write(path, lambda f, image=image: image.save(f, format="PNG"))
            if macs:
                macs_.append_batch_record(folder, macs_.batch_record(number, [p.index for p in batch], batch_macs))
            if on_batch is not None:
                on_batch(number, batch, images)
    return len(todo)


def full_image_cache(cfg, kwargs: dict, dtype, device) -> Path:
    """The shared folder of the full model's images, keyed by everything they depend on (the prompt
    list, a local model and the code by content; batch size too, since batched and single generation
    differ in the last bits)."""
    run_material = keys.key_material(OmegaConf.to_container(cfg, resolve=True))  # a local model by content
    material = {"model": run_material["model"], "call": kwargs, "dtype": str(dtype),
                "device": torch.device(device).type, "seed": cfg.seed, "batch_size": cfg.batch_size,
                "prompts_sha256": run_material["data"]["prompts_sha256"], "code": run_material["code"]}
    if cfg.compile:
        material["compile"] = [cfg.compile, cfg.compile_mode]
    folder = Path(cfg.output_root) / "full_images" / f"{cfg.model.name}-{keys.digest(material)[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        write_json(folder / "key.json", material)
    return folder


def link_images(source: Path, folder: Path, indices: list[int]) -> None:
    """Hard-links (or copies, across file systems) cached images into a run's folder, so a copied
    run folder is complete on its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        src, dst = image_path(source, i), image_path(folder, i)
        if dst.is_symlink():
            dst.unlink()  # from an older layout
        if dst.exists():
            if os.path.samefile(src, dst):
                continue
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


FIRST_BATCH = "first_batch.json"  # what the method reports of the run's first batch (its cache memory)


def first_batch_missing(run_dir: Path) -> bool:
    return not (run_dir / FIRST_BATCH).exists()


def save_selection(stats, path: Path, row: int = 0, prompt: str = "") -> None:
    """Writes one prompt's per-step selection statistics (a cat.GenerationStats) to `selection.npz` (drawn by
    `experiments.reports.figures.selection_figure`)."""
    pruned = [s.num_recomputed for s in stats.steps if s.phase == "pruned"]
    n = stats.num_image_tokens
    zeros = np.zeros(n, dtype=np.float32)
    pick = lambda t, dtype=np.float32: zeros.astype(dtype) if t is None else t[row].numpy().astype(dtype)  # noqa: E731
    np.savez_compressed(
        path,
        noise_magnitude=np.stack([pick(s.noise_magnitude) for s in stats.steps]),
        active=np.stack([pick(s.active, bool) if s.active is not None else np.ones(n, bool) for s in stats.steps]),
        staleness=np.stack([pick(s.staleness) for s in stats.steps]),
        labels=stats.labels[row].numpy() if stats.labels is not None else np.zeros(n, np.int64),
        grid=np.array(stats.grid),
        steps=np.array([s.step for s in stats.steps]),
        phases=np.array([s.phase for s in stats.steps]),
        prompt=np.array(prompt),
        kept=np.array(min(pruned) if pruned else 0),
        num_clusters=np.array(int(stats.labels[row].max()) + 1 if stats.labels is not None else 0),
    )


def record_first_batch(handle, batch, run_dir: Path, prompt: str) -> None:
    """Records what the method reports after the run's first batch (the same batch whether the run is
    fresh or resumed): the first prompt's selection statistics when its steps carry selection maps
    (selection.npz), then its cache memory (first_batch.json, written last: its presence says the record
    is complete)."""
    stats = handle.stats
    if stats.has_selection:
        save_selection(stats, run_dir / "selection.npz", prompt=prompt)
    write_json(run_dir / FIRST_BATCH, {"cache_bytes": handle.cache_bytes(), "cache_batch": len(batch)})


def generate_images(cfg, pipe, method, run_dir: Path, prompts: list[Prompt], kwargs: dict, state, dtype,
                    device) -> dict[str, Path]:
    """The full model's images (from the shared cache, generated where missing) and the method's, in the
    run's folders `images/full/` and `images/<method>/`; returns the folders by variant.

    Processes share out whole batches, so an image never depends on the number of processes. With
    `metrics.macs` every batch's executed transformer MACs are counted while it is generated and kept next
    to its images (`macs.jsonl`, in the shared cache for the full model's): a batch whose images exist
    without its count is generated again, whole. The method reports what it did on the run's first batch
    (`record_first_batch`); a resumed run that lacks that record generates the first batch again, whole.
    """
    variant = cfg.method.name
    folders = {"full": run_dir / "images" / "full", variant: run_dir / "images" / variant}
    shared_full = full_image_cache(cfg, kwargs, dtype, device)
    count = bool(cfg.metrics.macs)
    with state.split_between_processes(batches(prompts, cfg.batch_size)) as mine:
        # The full model's images depend only on model, prompts, seed, call, dtype, device, batch size and
        # code: shared by every run and sweep cell with the same ones. Locked: concurrent cells wait, then reuse.
        shared_full.mkdir(parents=True, exist_ok=True)
        with lock(shared_full / ".lock", state.num_processes), compiled_blocks(pipe.transformer, cfg.compile,
                                                                               cfg.compile_mode):
            if state.num_processes == 1:  # another rank may be writing its share
                clean_temporaries(shared_full)
            generate(pipe, list(mine), shared_full, cfg.seed, kwargs, cfg.overwrite, desc="full model", macs=count)
        link_images(shared_full, folders["full"], [p.index for _, batch in mine for p in batch])
        if method is not None:
            with cat.apply(pipe, method, compile=cfg.compile, compile_mode=cfg.compile_mode) as handle:
                method_kwargs = {**kwargs, **handle.call_overrides(kwargs["num_inference_steps"])}

                def first_batch(number, batch, images) -> None:
                    if number == 0:
                        record_first_batch(handle, batch, run_dir, prompts[0].text)

                def unrecorded(number, batch) -> bool:  # the first batch of a run resumed without its record
                    if number == 0 and first_batch_missing(run_dir):
                        log.info("%s: generating the first batch again for the method's statistics", variant)
                        return True
                    return False

                generate(pipe, list(mine), folders[variant], cfg.seed, method_kwargs, cfg.overwrite,
                         on_batch=first_batch, desc=variant, macs=count, redo=unrecorded)
    return folders
