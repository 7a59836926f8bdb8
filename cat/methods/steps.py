"""`steps`: the full model at fewer denoising steps, the simplest way to spend less compute.

Nothing in the model's computation changes; the handle changes the pipeline call's
`num_inference_steps` (`handle.call_overrides()`). Its fidelity is measured against the full model at
the reference step count (the harness's full-model images), not against itself, so it pays for the
trajectory it changes.

What the library checks, and what it cannot: the overrides replace the call's `num_inference_steps`,
and the full-model reference is a separate call the handle never sees, so the reference step count is
known only when the caller gives it: `handle.call_overrides(reference_steps=R)` raises when
`num_steps > R` (the harness passes its `model.steps`, and checks the same before loading a model).
On a pipeline, a call that runs another step count than `num_steps` (one that did not take the
overrides, e.g. `pipe(prompt, num_inference_steps=8)` with `num_steps=60`) raises at its first
transformer call, read from the scheduler's `num_inference_steps`. Not checked: a reference above
`num_steps` that is never given, and anything on a bare transformer (no pipeline call to observe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diffusers.hooks import ModelHook

from ..engine.clock import outside_schedule
from ..engine.patching import attach_hook
from ..engine.stats import MethodStats, StepRecord
from .base import MethodConfig, MethodHandle, architecture, check, is_int, register, scale_steps

HOOK_NAME = "steps"


class StepsHandle(MethodHandle):
    """The method is the call override; on a pipeline, a hook checks that each call takes it (and records
    the steps it runs, each a full one)."""

    cuda_graphs = True  # it keeps no tensor

    def _install(self) -> None:
        if self._pipe is None or not hasattr(self._pipe, "encode_prompt"):
            return  # a bare transformer: no pipeline call whose step count could be read
        self._check = _StepCountCheck(self._pipe, self.config)
        self.clock.observe_pipeline(self._undo)
        attach_hook(self.transformer, self._check, self._undo, HOOK_NAME)

    @property
    def stats(self) -> MethodStats:
        check = getattr(self, "_check", None)
        return MethodStats(steps=[StepRecord(s, "full") for s in range(check.calls if check else 0)])

    def _new_generation(self) -> None:
        if hasattr(self, "_check"):
            self._check.arm()


class _StepCountCheck(ModelHook):
    """At the first transformer call of a pipeline call (armed when the call encodes its prompt), refuses a
    schedule of another length than `num_steps`: the scheduler is set by then, the denoising not begun."""

    def __init__(self, pipe, config: "StepsConfig"):
        super().__init__()
        self.pipe = pipe
        self.config = config
        self.armed = False
        self.calls = 0

    def arm(self) -> None:
        self.armed = True
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        if not outside_schedule(kwargs):
            self.calls += 1
        if self.armed:
            self.armed = False
            ran = getattr(getattr(self.pipe, "scheduler", None), "num_inference_steps", None)
            n = self.config.num_steps
            if ran is not None and ran != n:
                fewer = (f"; that is fewer than num_steps, and the method is the full model at fewer steps than "
                         f"its reference, so num_steps must be at most the reference's step count" if ran < n else "")
                raise ValueError(
                    f"StepsConfig(num_steps={n}) is applied, but this pipeline call runs {ran} steps{fewer}. Call "
                    f"the pipeline with **handle.call_overrides(reference_steps=<the full model's steps>): it sets "
                    f"num_inference_steps={n} and refuses a reference below it."
                )
        return args, kwargs


@register
@dataclass(frozen=True)
class StepsConfig(MethodConfig):
    """Attributes:
        num_steps: denoising steps of the accelerated run (the reference runs the model's own count);
            at most the reference's. Use it as
            `pipe(prompt, **handle.call_overrides(reference_steps=R))`, which sets
            `num_inference_steps=num_steps` and raises if `num_steps > R`; a pipeline call that runs
            another step count raises at its first transformer call (see the module docstring for what
            cannot be checked).

    The authors' setting, `StepsConfig.authors(family, num_steps)`: there are no authors (fewer steps is the
    baseline every paper compares with). It returns the setting that halves the steps, round(T / 2) and at
    least 1, for every family, the same as `for_steps`. `has_warmup` is False: every step it runs is full.
    """

    name: ClassVar[str] = "steps"
    handle: ClassVar[type] = StepsHandle
    has_warmup: ClassVar[bool] = False  # every step it runs is full: no warm-up to set

    num_steps: int = 14

    def __post_init__(self) -> None:
        check(is_int(self.num_steps) and self.num_steps >= 1, self, "num_steps", "an integer >= 1")

    def check_steps(self, num_steps: int) -> None:
        check(self.num_steps <= num_steps, self, "num_steps",
              f"at most the reference step count ({num_steps}); fewer steps is the point")

    def call_overrides(self, reference_steps: int | None = None) -> dict:
        return {"num_inference_steps": self.num_steps}

    @classmethod
    def for_steps(cls, num_steps: int) -> dict:
        """Half the reference's steps."""
        return {"num_steps": scale_steps(14, num_steps)}

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """No authors: half the steps (see the class docstring)."""
        architecture(cls, family, num_steps)
        return {"num_steps": scale_steps(14, num_steps)}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["StepsConfig", "StepsConfig"]:
        return cls(num_steps=num_steps), cls(num_steps=max(1, num_steps // 2))

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """The full model at `num_steps` of its own (the reference's step count does not matter)."""
        return [num_tokens] * self.num_steps
