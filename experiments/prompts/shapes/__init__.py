"""The embedded default: a small SD3-architecture model trained on a procedural shapes grammar.

`DEFAULT_MODEL_DIR` holds the shipped diffusers pipeline (safetensors), `load_prompts` the bundled
held-out captions, and `judge` / `adherence` a weight-free check of an image against its caption.
"""

from __future__ import annotations

from pathlib import Path

from .grammar import caption, parse, sample_scenes, split
from .judge import adherence, judge

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "assets" / "tiny-sd3-shapes"
# heldout: the evaluation prompts. calibration: 32 other held-out captions (never trained on, none in the
# evaluation file) for tuning methods: the first new captions of `sample_scenes` over the held-out split,
# seeds 11, 12, ...
PROMPT_FILES = {"heldout": Path(__file__).with_name("heldout_prompts.txt"),
                "calibration": Path(__file__).with_name("calibration_prompts.txt")}
# The model was trained with the CLIP tokens only (no T5 padding): pass this to the pipeline.
PIPELINE_KWARGS = {"max_sequence_length": 0}
# It has no T5 encoder: diffusers needs the absent components named when loading.
LOAD_KWARGS = {"text_encoder_3": None, "tokenizer_3": None}


def load_prompts(split_name: str = "heldout") -> list[str]:
    """The bundled prompt set: captions never seen in training."""
    if split_name not in PROMPT_FILES:
        raise ValueError(f"unknown prompt split {split_name!r}; allowed: {', '.join(PROMPT_FILES)}")
    return [line.strip() for line in PROMPT_FILES[split_name].read_text(encoding="utf-8").splitlines()
            if line.strip()]


def load_pipeline(path: str | Path = DEFAULT_MODEL_DIR, device: str = "cpu", dtype=None):
    """The shipped StableDiffusion3Pipeline, loaded offline from safetensors."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    path = Path(path)
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"no model at {path}; train it with `python scripts/train_tiny.py --out {path}`"
        )
    pipe = StableDiffusion3Pipeline.from_pretrained(
        path, dtype=dtype or torch.float32, use_safetensors=True, local_files_only=True, **LOAD_KWARGS
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


__all__ = [
    "DEFAULT_MODEL_DIR",
    "PIPELINE_KWARGS",
    "adherence",
    "caption",
    "judge",
    "load_pipeline",
    "load_prompts",
    "parse",
    "sample_scenes",
    "split",
]
