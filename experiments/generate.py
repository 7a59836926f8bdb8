"""Batched, cached generation with one seeded generator per prompt, in batches fixed by the run.

Prompt i of a set is always generated from `torch.Generator().manual_seed(prompt_seed(seed, i))`, on the
CPU. Batched and single generation differ in the last bits, so the batch make-up is part of the run:
the run's prompt list is cut into consecutive batches of `batch_size` once (`batches`), and a batch is
always generated whole, whether the run is resumed, sharded or spread over several processes. Images
are written as `<dir>/<index:05d>.png` and reused when present.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import Prompt
from .sinks import atomic_write

Batch = tuple[int, list[Prompt]]  # (batch number in the run, its prompts)


def prompt_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


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
