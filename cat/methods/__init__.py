"""CAT and its peers behind one interface (`cat.apply(target, config)`); see `base.py`."""

from .base import METHODS, MethodConfig, MethodHandle, apply, register

__all__ = ["METHODS", "MethodConfig", "MethodHandle", "apply", "register"]
