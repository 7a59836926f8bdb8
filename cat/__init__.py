"""CAT Pruning: cluster-aware token pruning for diffusion transformers in diffusers, and its peers.

    handle = cat.apply(pipe, cat.CATConfig(keep_ratio=0.3, warmup_steps=8))
    images = pipe(prompt).images
    handle.remove()

Every method is a config class in `cat.METHODS` (name -> class); `cat.apply(pipe, config)`
dispatches on the config's type.
"""

from .adapters import supported_models
from .api import CATHandle, apply
from .config import POLICIES, CATConfig, token_schedule
from .methods import METHODS, MethodConfig, MethodHandle
from .methods.cat_fora import CATFORAConfig
from .methods.diffusers_cache import FBCacheConfig, MagCacheConfig, TaylorSeerConfig, calibrate_magcache
from .methods.fora import FORAConfig
from .methods.ras import RASConfig
from .methods.steps import StepsConfig
from .methods.toca import ToCaConfig
from .state import GenerationStats, StepRecord

__all__ = [
    "CATConfig",
    "CATFORAConfig",
    "CATHandle",
    "FBCacheConfig",
    "FORAConfig",
    "GenerationStats",
    "METHODS",
    "MagCacheConfig",
    "MethodConfig",
    "MethodHandle",
    "POLICIES",
    "RASConfig",
    "StepRecord",
    "StepsConfig",
    "TaylorSeerConfig",
    "ToCaConfig",
    "apply",
    "calibrate_magcache",
    "supported_models",
    "token_schedule",
]
