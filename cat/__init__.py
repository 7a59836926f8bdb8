"""CAT Pruning: cluster-aware token pruning for diffusion transformers in diffusers, and its peers.

    handle = cat.apply(pipe, cat.CATConfig())
    images = pipe(prompt).images
    handle.remove()

Every method is a config class in `cat.METHODS` (name -> class), found by importing every module of
`cat/methods/`; `cat.apply(pipe, config)` dispatches on the config's type.
"""

from .api import apply, check_compile, check_cuda_graphs, compile_blocks
from .engine.stats import GenerationStats, MethodStats, StepRecord
from .families import supported_models
from .methods import METHODS, MethodConfig, MethodHandle, register
from .methods.base import is_int, is_num
from .methods.cat import POLICIES, CATConfig, CATHandle, token_schedule
from .methods.cat_fora import CATFORAConfig
from .methods.fbcache import FBCacheConfig
from .methods.fora import FORAConfig
from .methods.magcache import MagCacheConfig, calibrate_magcache
from .methods.ras import RASConfig
from .methods.steps import StepsConfig
from .methods.taylorseer import TaylorSeerConfig
from .methods.toca import ToCaConfig

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
    "MethodStats",
    "POLICIES",
    "RASConfig",
    "StepRecord",
    "StepsConfig",
    "TaylorSeerConfig",
    "ToCaConfig",
    "apply",
    "calibrate_magcache",
    "check_compile",
    "check_cuda_graphs",
    "compile_blocks",
    "is_int",
    "is_num",
    "register",
    "supported_models",
    "token_schedule",
]

# The field's step and block caches (issue 36): DBCache, TeaCache, Pyramid Attention Broadcast, FasterCache.
from .methods.dbcache import DBCacheConfig  # noqa: E402
from .methods.fastercache import FasterCacheConfig  # noqa: E402
from .methods.pab import PABConfig  # noqa: E402
from .methods.teacache import TeaCacheConfig  # noqa: E402

__all__ += ["DBCacheConfig", "FasterCacheConfig", "PABConfig", "TeaCacheConfig"]

# Every registered method's config under its class name (cat.CATBudgetConfig, cat.ClusCaConfig, ...), so a method
# added as one file of cat/methods/ is exported without an edit here.
globals().update({config_cls.__name__: config_cls for config_cls in METHODS.values()})
__all__ += sorted({config_cls.__name__ for config_cls in METHODS.values()} - set(__all__))
