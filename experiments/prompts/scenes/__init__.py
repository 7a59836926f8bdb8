"""The 1024-token scene model: multi-object scenes (experiments/prompts/scenes/grammar) for a small
SD3-architecture model with 32x32 image tokens, where token selection has many regions to tell apart.

`MODEL_DIR` holds the trained pipeline (safetensors), `load_prompts` the bundled held-out captions,
`judge` / `adherence` the weight-free per-object judge.
"""

from __future__ import annotations

from pathlib import Path

from .grammar import caption, parse, sample_scenes
from .judge import adherence, judge

MODEL_DIR = Path(__file__).resolve().parents[3] / "assets" / "tiny-sd3-scenes"
# heldout: the evaluation prompts. calibration: 32 other held-out captions (never trained on, none in the
# evaluation file) for tuning methods: the first new captions of `sample_scenes` over the held-out split,
# seeds 11, 12, ...
PROMPT_FILES = {"heldout": Path(__file__).with_name("heldout_prompts.txt"),
                "calibration": Path(__file__).with_name("calibration_prompts.txt")}
IMAGE_SIZE = 128


def load_prompts(split_name: str = "heldout") -> list[str]:
    """The bundled held-out captions (never seen in training)."""
    if split_name not in PROMPT_FILES:
        raise ValueError(f"unknown prompt split {split_name!r}; allowed: {', '.join(PROMPT_FILES)}")
    return [line.strip() for line in PROMPT_FILES[split_name].read_text(encoding="utf-8").splitlines()
            if line.strip()]


__all__ = ["IMAGE_SIZE", "MODEL_DIR", "adherence", "caption", "judge", "load_prompts", "parse", "sample_scenes"]
