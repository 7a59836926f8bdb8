"""The machinery methods share.

- `handle.py`: the handle every method's handle extends (exact undo, compile); `clock.py`: the one
  generation clock; `stats.py`: the statistics every handle reports; `patching.py`: attach a hook, swap a
  submodule, set an attribute, each with its exact inverse.
- The token engine (cat, cat_fora, cat_budget, random tokens, RAS): `runtime.py`, `state.py`
  (per-generation state, the buffers kept across generations, output caching), `tokens.py` (a pruned
  step's index tensors, gather/scatter with them, cache storage), `processors/` (attention),
  `wrappers.py` (token-wise modules), `token_handle.py` (the step hook and the install).
- `module_cache.py`: FORA's and ToCa's hooks on cached modules; `diffusers_cache.py`: the handles built
  on diffusers' own cache hooks (TaylorSeer, FBCache, MagCache).
- `forecast_cache.py`: the forecasting caches' schedule and hooks (HiCache, ClusCa), on `module_cache.py`.
"""

from .clock import GenerationClock, outside_schedule
from .handle import MethodHandle
from .state import GenerationState, LayerCache
from .stats import GenerationStats, MethodStats, StepRecord, tensor_bytes

__all__ = ["GenerationClock", "GenerationState", "GenerationStats", "LayerCache", "MethodHandle", "MethodStats",
           "StepRecord", "outside_schedule", "tensor_bytes"]
