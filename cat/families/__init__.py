"""Model-family facts as data, found through a registry keyed by transformer class name.

One `Family` per family of diffusers transformers says where its blocks and modules are (a pattern per
kind of method: the token engine's pruned attentions and feed-forwards, FORA/ToCa's cached modules,
TaylorSeer's forecast modules), how a call's input gives the token grid, how the output becomes tokens
and back, and how to build example inputs (random for tests, shapes only on `meta` for MAC counts).
Every method, the MAC counter (`experiments/macs.py`) and the tests read them from here.
"""

from . import flux, pixart, sd3  # noqa: F401  (each registers its family)
from .base import (
    ATTENTION,
    FEED_FORWARD,
    FORECAST,
    JOINT,
    STEP_CACHED,
    Family,
    family_for,
    family_names,
    family_of_class,
    find_modules,
    supported_models,
)

__all__ = ["ATTENTION", "FEED_FORWARD", "FORECAST", "JOINT", "STEP_CACHED", "Family", "family_for",
           "family_names", "family_of_class", "find_modules", "supported_models"]
