"""Model-family adapters, found through a registry keyed by transformer class name."""

from . import sd3  # noqa: F401  (registers the family)
from .base import FamilySpec, Runtime, spec_for, supported_models

__all__ = ["FamilySpec", "Runtime", "spec_for", "supported_models"]
