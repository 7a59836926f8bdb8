"""Batched, cached generation with one seeded generator per prompt.

Prompt i of a set is always generated from `torch.Generator().manual_seed(prompt_seed(seed, i))`, on the
CPU, so an image depends only on (model, method, prompt, seed): not on the batch size, the shard or
the number of processes. Images are written as `<dir>/<index:05d>.png` and reused when present.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import Prompt
from .sinks import atomic_write


def prompt_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def generate(pipe, prompts: list[Prompt], folder: Path, seed: int, batch_size: int, call_kwargs: dict,
             overwrite: bool = False, on_batch=None, desc: str = "generate") -> int:
    """Generates the missing images of `prompts` into `folder`; returns how many were generated.

    `on_batch(batch, images)` is called after each batch (e.g. to keep CAT's selection statistics).
    """
    folder.mkdir(parents=True, exist_ok=True)
    todo = [p for p in prompts if overwrite or not image_path(folder, p.index).exists()]
    for start in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not todo, leave=False):
        batch = todo[start:start + batch_size]
        generators = [torch.Generator().manual_seed(prompt_seed(seed, p.index)) for p in batch]
        images = pipe([p.text for p in batch], generator=generators, **call_kwargs).images
        for prompt, image in zip(batch, images):
            path = image_path(folder, prompt.index)
            atomic_write(path, lambda f, image=image: image.save(f, format="PNG"))
        if on_batch is not None:
            on_batch(batch, images)
    return len(todo)
