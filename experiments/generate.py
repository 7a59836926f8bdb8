"""Generation: batched and cached, one seeded generator per prompt, in batches fixed by the run; the shared
cache of the full model's images; what the method reports of the run's first batch.

Prompt i of a set is always generated from `torch.Generator().manual_seed(prompt_seed(seed, i))`, on the
CPU. Batched and single generation differ in the last bits, so the batch make-up is part of the run:
the run's prompt list is cut into consecutive batches of `batch_size` once (`batches`), and a batch is
always generated whole, whether the run is resumed, sharded or spread over several processes. Images
are written as `<dir>/<index:05d>.png` and reused when present.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import Prompt
from .sinks import atomic_write, write_json

log = logging.getLogger(__name__)

Batch = tuple[int, list[Prompt]]  # (batch number in the run, its prompts)


def prompt_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def call_kwargs(cfg) -> dict:
    """The pipeline call of a run: steps, guidance, resolution and the model's own call arguments."""
    from omegaconf import OmegaConf

    model = cfg.model
    return {"num_inference_steps": model.steps, "guidance_scale": model.guidance_scale, "height": model.height,
            "width": model.width, **OmegaConf.to_container(model.call_kwargs or {})}


def run_prompts(cfg) -> list[Prompt]:
    """The run's prompt list (its data config: set, split, file, limit, categories, shard)."""
    from .data import prompts_of

    return prompts_of(cfg.data)


def generators(cfg, prompts: list[Prompt]) -> list[torch.Generator]:
    """One CPU generator per prompt, seeded by the run's seed and the prompt's index."""
    return [torch.Generator().manual_seed(prompt_seed(cfg.seed, p.index)) for p in prompts]


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def batches(prompts: list[Prompt], batch_size: int) -> list[Batch]:
    """The run's batches: consecutive slices of its prompt list, numbered from 0."""
    return [(start // batch_size, prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]


def run_batch(pipe, batch: list[Prompt], seed: int, call_kwargs: dict) -> list:
    """The images of one batch (PIL), each prompt from its own seeded generator."""
    generators = [torch.Generator().manual_seed(prompt_seed(seed, p.index)) for p in batch]
    return pipe([p.text for p in batch], generator=generators, **call_kwargs).images


def generate(pipe, work: list[Batch], folder: Path, seed: int, call_kwargs: dict, overwrite: bool = False,
             on_batch=None, desc: str = "generate") -> int:
    """Generates every batch of `work` with a missing image (all with `overwrite`) into `folder`, whole,
    writing the images that are missing; returns how many batches were generated.

    `on_batch(number, batch, images)` is called after each generated batch.
    """
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(n, batch) for n, batch in work
            if overwrite or not all(image_path(folder, p.index).exists() for p in batch)]
    for number, batch in tqdm(todo, desc=desc, disable=not todo, leave=False):
        images = run_batch(pipe, batch, seed, call_kwargs)
        for prompt, image in zip(batch, images):
            path = image_path(folder, prompt.index)
            if overwrite or not path.exists():  # a batch resumed whole reproduces the images it has
                atomic_write(path, lambda f, image=image: image.save(f, format="PNG"))
        if on_batch is not None:
            on_batch(number, batch, images)
    return len(todo)


def full_image_cache(cfg, kwargs: dict, dtype, device) -> Path:
    """The shared folder of the full model's images, keyed by everything they depend on (the prompt
    list, a local model and the code by content; batch size too, since batched and single generation
    differ in the last bits)."""
    from omegaconf import OmegaConf

    from . import identity

    run_material = identity.key_material(OmegaConf.to_container(cfg, resolve=True))  # a local model by content
    material = {"model": run_material["model"], "call": kwargs, "dtype": str(dtype),
                "device": torch.device(device).type, "seed": cfg.seed, "batch_size": cfg.batch_size,
                "prompts_sha256": run_material["data"]["prompts_sha256"], "code": run_material["code"]}
    if cfg.compile:
        material["compile"] = [cfg.compile, cfg.compile_mode]
    folder = Path(cfg.output_root) / "full_images" / f"{cfg.model.name}-{identity.digest(material)[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        write_json(folder / "key.json", material)
    return folder


def link_images(source: Path, folder: Path, indices: list[int]) -> None:
    """Hard-links (or copies, across file systems) cached images into a run's folder, so a copied
    run folder is complete on its own."""
    import os
    import shutil

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


def record_first_batch(handle, batch, run_dir: Path, prompt: str) -> None:
    """Records what the method reports after the run's first batch (the same batch whether the run is
    fresh or resumed): the first prompt's selection statistics when its steps carry selection maps
    (selection.npz), then its cache memory (first_batch.json, written last: its presence says the record
    is complete)."""
    stats = handle.stats
    if stats.has_selection:
        from .figures import save_selection

        save_selection(stats, run_dir / "selection.npz", prompt=prompt)
    write_json(run_dir / FIRST_BATCH, {"cache_bytes": handle.cache_bytes(), "cache_batch": len(batch)})


def generate_images(cfg, pipe, method, run_dir: Path, prompts: list[Prompt], kwargs: dict, state, dtype,
                    device) -> dict[str, Path]:
    """The full model's images (from the shared cache, generated where missing) and the method's, in the
    run's folders `images/full/` and `images/<method>/`; returns the folders by variant.

    Processes share out whole batches, so an image never depends on the number of processes. The method
    reports what it did on the run's first batch (`record_first_batch`), generated once more when a
    resumed run already had its images.
    """
    import cat

    from .latency import compiled_blocks
    from .runs import lock
    from .sinks import clean_temporaries

    variant = cfg.method.name
    folders = {"full": run_dir / "images" / "full", variant: run_dir / "images" / variant}
    shared_full = full_image_cache(cfg, kwargs, dtype, device)
    with state.split_between_processes(batches(prompts, cfg.batch_size)) as mine:
        # The full model's images depend only on model, prompts, seed, call, dtype, device, batch size and
        # code: shared by every run and sweep cell with the same ones. Locked: concurrent cells wait, then reuse.
        shared_full.mkdir(parents=True, exist_ok=True)
        with lock(shared_full / ".lock", state.num_processes), compiled_blocks(pipe.transformer, cfg.compile,
                                                                               cfg.compile_mode):
            if state.num_processes == 1:  # another rank may be writing its share
                clean_temporaries(shared_full)
            generate(pipe, list(mine), shared_full, cfg.seed, kwargs, cfg.overwrite, desc="full model")
        link_images(shared_full, folders["full"], [p.index for _, batch in mine for p in batch])
        if method is not None:
            with cat.apply(pipe, method, compile=cfg.compile, compile_mode=cfg.compile_mode) as handle:
                method_kwargs = {**kwargs, **handle.call_overrides(kwargs["num_inference_steps"])}

                def first_batch(number, batch, images) -> None:
                    if number == 0:
                        record_first_batch(handle, batch, run_dir, prompts[0].text)

                generate(pipe, list(mine), folders[variant], cfg.seed, method_kwargs, cfg.overwrite,
                         on_batch=first_batch, desc=variant)
                if state.is_main_process and first_batch_missing(run_dir):
                    # the first batch's images were already there (a resumed run): generate it once more,
                    # whole, for what the method reports of it
                    log.info("%s: generating the first batch again for the method's statistics", variant)
                    first = batches(prompts, cfg.batch_size)[0][1]
                    first_batch(0, first, run_batch(pipe, first, cfg.seed, method_kwargs))
    return folders
