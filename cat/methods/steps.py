"""`steps`: the full model at fewer denoising steps, the simplest way to spend less compute.

Nothing is patched; the handle changes the pipeline call's `num_inference_steps`. Its fidelity is
measured against the full model at the reference step count (the harness's full-model images), not
against itself, so it pays for the trajectory it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodConfig, MethodHandle, check, is_int, register


class StepsHandle(MethodHandle):
    def _install(self) -> None:
        pass  # the whole method is the call override


@register
@dataclass(frozen=True)
class StepsConfig(MethodConfig):
    """Attributes:
        num_steps: denoising steps of the accelerated run (the reference runs the model's own count).
    """

    name: ClassVar[str] = "steps"
    handle: ClassVar[type] = StepsHandle

    num_steps: int = 14

    def __post_init__(self) -> None:
        check(is_int(self.num_steps) and self.num_steps >= 1, self, "num_steps", "an integer >= 1")

    def check_steps(self, num_steps: int) -> None:
        check(self.num_steps <= num_steps, self, "num_steps",
              f"at most the reference step count ({num_steps}); fewer steps is the point")

    def call_overrides(self) -> dict:
        return {"num_inference_steps": self.num_steps}
