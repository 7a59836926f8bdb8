"""The generation clock every handle keeps: when a generation starts, and which calls stand outside it.

A generation starts when a pipeline call encodes its prompt (`encode_prompt`, which also says whether the
batch holds [uncond..., cond...] CFG pairs), or, for a bare transformer (no pipeline call to observe),
when the user calls `handle.reset(...)`, after `num_steps` calls when the schedule's length is known
(`handle.reset(num_steps=...)`), and otherwise when a call's timestep is above the previous call's. Only
that last rule reads the timestep; a timestep given as a device tensor is then read on the host, one
synchronisation per call (a pipeline, or `num_steps`, avoids it). A call
with `skip_layers` is SD3.5's skip-layer-guidance call, made on part of the batch with some blocks
skipped: it stands outside the schedule, and each kind of handle leaves its step state alone for it.

The clock is also where every method's config meets the step count it runs at: at the first call of a
generation whose length is known (the pipeline's scheduler; for a bare transformer `handle.reset(num_steps=...)`)
it calls the config's `check_steps(n)`, the rule the harness applies before loading a model, so a setting that
cannot do anything at that count (a warm-up covering every step, say) raises instead of silently running the
full model. And a bare transformer whose batch layout was never said (`handle.reset(cfg_pairs=...)`) warns once
when a method reads it: its rows are then taken as separate prompts, not [uncond..., cond...] pairs.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Callable

import torch

from .patching import set_instance_attr


def outside_schedule(kwargs: dict) -> bool:
    """Whether a transformer call is SD3.5's skip-layer-guidance call (outside the step schedule)."""
    return kwargs.get("skip_layers") is not None


class GenerationClock:
    """Starts generations for one handle: `on_new_generation()` runs whenever one starts.

    Attributes:
        cfg_pairs: whether the current generation's batch is [uncond..., cond...] CFG pairs.
        guidance_scale: the pipeline's CFG scale, read when its call encodes the prompt (None without one).
        num_steps_hint: the schedule's length given by the user for a bare transformer (`handle.reset`),
            kept for later generations; a pipeline's scheduler says it by itself.
    """

    def __init__(self, pipe, on_new_generation: Callable[[], None],
                 check_steps: Callable[[int], None] | None = None):
        self.pipe = pipe
        self.on_new_generation = on_new_generation
        self.check_steps = check_steps  # the config's rule for a step count: raises ValueError naming the field
        self.guidance_scale: float | None = None
        self.num_steps_hint: int | None = None
        self.last_timestep: float | None = None
        self.calls = 0  # calls of the schedule since the generation started (a bare transformer's)
        # with no pipeline call to observe, the timesteps tell when a new generation starts
        self.watches_timesteps = pipe is None or not hasattr(pipe, "encode_prompt")
        self._cfg_pairs = False
        self._pairs_known = False  # said by a pipeline call or handle.reset(cfg_pairs=...)
        self._pairs_warned = False
        self._steps_checked = False  # this generation's step count went through check_steps

    @property
    def cfg_pairs(self) -> bool:
        """Whether the current generation's batch is [uncond..., cond...] CFG pairs; read on a bare transformer
        that never said so, it warns once (rows are then separate prompts, and the images differ from the
        pipeline's)."""
        if self.watches_timesteps and not self._pairs_known and not self._pairs_warned:
            self._pairs_warned = True
            warnings.warn("cat.apply on a bare transformer: whether its batch holds classifier-free-guidance pairs "
                          "([uncond..., cond...]) is unknown, so every row is taken as a prompt of its own and the "
                          "images differ from those of the method applied to the pipeline; say it with "
                          "handle.reset(cfg_pairs=True) (or False)", UserWarning, stacklevel=2)
        return self._cfg_pairs

    def new_generation(self, cfg_pairs: bool | None = None, num_steps: int | None = None) -> None:
        if num_steps is not None:
            if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1):
                raise ValueError(f"num_steps={num_steps!r} is invalid: num_steps must be an integer >= 1.")
            self.num_steps_hint = num_steps
        if cfg_pairs is not None:
            self._cfg_pairs, self._pairs_known = cfg_pairs, True
        self.last_timestep = None
        self.calls = 0
        self._steps_checked = False
        self.on_new_generation()

    def observe_pipeline(self, undo: list) -> None:
        """Wraps the pipeline's `encode_prompt` to start a generation at every call, with the call's own
        `do_classifier_free_guidance` argument; appends the exact inverse to `undo`."""
        if self.watches_timesteps:
            return
        pipe = self.pipe
        encode = pipe.encode_prompt
        signature = inspect.signature(encode)

        @functools.wraps(encode)
        def encode_prompt(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.guidance_scale = getattr(pipe, "_guidance_scale", None)
            self.new_generation(bool(bound.arguments.get("do_classifier_free_guidance", False)))
            return encode(*args, **kwargs)

        set_instance_attr(pipe, "encode_prompt", encode_prompt, undo)

    def observe_call(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Before a transformer call of the schedule. For a bare transformer, the call after the last step of
        a schedule of known length starts a new generation; without a length, a timestep above the previous
        call's does. At the first call of a generation whose length is known, the config checks it."""
        if self.watches_timesteps:
            self._watch(transformer, args, kwargs)
        if not self._steps_checked:
            self._steps_checked = True
            n = self.num_steps(getattr(self.pipe, "scheduler", None))
            if n is not None and self.check_steps is not None:
                self.check_steps(n)

    def _watch(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.num_steps_hint is not None:
            if self.calls == self.num_steps_hint:
                self.new_generation()
            self.calls += 1
            return
        t = call_timestep(transformer, args, kwargs)
        if t is None:
            return
        if self.last_timestep is not None and t > self.last_timestep:
            self.new_generation()
        self.last_timestep = t

    def num_steps(self, scheduler=None) -> int | None:
        """The length of the schedule: the scheduler's when there is one, else the user's hint."""
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is not None and len(timesteps) > 0:
            return len(timesteps)
        return self.num_steps_hint


def call_timestep(transformer, args: tuple, kwargs: dict) -> float | None:
    """The `timestep` argument of a transformer call as a number (a host read of a tensor; None if absent)."""
    timestep = kwargs.get("timestep")
    if timestep is None and args:
        try:
            bound = inspect.signature(type(transformer).forward).bind_partial(transformer, *args, **kwargs)
        except TypeError:
            return None
        timestep = bound.arguments.get("timestep")
    if isinstance(timestep, torch.Tensor):
        return None if timestep.device.type == "meta" or timestep.numel() == 0 else float(timestep.flatten()[0])
    return float(timestep) if isinstance(timestep, (int, float)) else None
