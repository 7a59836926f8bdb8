"""Model-family adapters, found through a registry keyed by transformer class name."""

from . import flux, pixart, sd3  # noqa: F401  (each registers its family)
from .base import FamilySpec, Runtime, spec_for, supported_models

__all__ = ["FamilySpec", "Runtime", "spec_for", "supported_models"]
