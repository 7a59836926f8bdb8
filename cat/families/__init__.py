"""Model-family facts as data, found through a registry keyed by transformer class name.

One `Family` per family of diffusers transformers says where its blocks and modules are (a pattern per
kind of method: the token engine's pruned attentions and feed-forwards, FORA/ToCa's cached modules,
TaylorSeer's forecast modules), how a call's input gives the token grid, how the output becomes tokens
and back, how to build example inputs (random for tests, shapes only on `meta` for MAC counts), and
which authors' code the methods' `authors()` settings follow for it (`architecture`, collected in
`ARCHITECTURES`). Every method, the MAC counter (`experiments/run/macs.py`) and the tests read them
from here.

Every module of this package is imported here, so a family's `register(Family(...))` runs when `cat` is
imported: adding a family is adding its file (docs/architecture.md, "Adding a model family"), with no
list to edit.
"""

import importlib
import pkgutil

from .base import (
    ARCHITECTURES,
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

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ARCHITECTURES", "ATTENTION", "FEED_FORWARD", "FORECAST", "JOINT", "STEP_CACHED", "Family",
           "family_for", "family_names", "family_of_class", "find_modules", "supported_models"]
