"""CAT Pruning: cluster-aware token pruning for diffusion transformers in diffusers.

    handle = cat.apply(pipe, cat.CATConfig(keep_ratio=0.3, warmup_steps=8))
    images = pipe(prompt).images
    handle.remove()
"""

from .adapters import supported_models
from .api import CATHandle, apply
from .config import POLICIES, CATConfig, token_schedule
from .state import GenerationStats, StepRecord

__all__ = [
    "CATConfig",
    "CATHandle",
    "GenerationStats",
    "POLICIES",
    "StepRecord",
    "apply",
    "supported_models",
    "token_schedule",
]
