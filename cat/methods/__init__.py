"""CAT and its peers, one module each, behind one contract (`base.py`).

Every module of this package is imported here, so a method's `@register` runs when `cat` is imported:
adding a method is adding its file (and its conf/method YAML), with no list to edit.
"""

import importlib
import pkgutil

from .base import METHODS, MethodConfig, MethodHandle, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "MethodConfig", "MethodHandle", "register"]
