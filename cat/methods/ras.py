"""RAS: region-adaptive sampling, the closest token-level peer of CAT on SD3.

Liu et al. 2025, "Region-Adaptive Sampling for Diffusion Transformers", arXiv 2502.10389 (code:
github.com/microsoft/RAS, `ras_manager` and its flow-matching scheduler's `ras_selection`).

After `warmup_steps` dense steps, each step recomputes only the tokens in the model's focus; the
others keep their previous output ("cached noise"), and attention reads their cached keys/values.
Selection, at the end of every step for the next one, as in the authors' scheduler:
- metric: per token, the standard deviation over channels of the predicted noise (mean over the
  token's p x p latent pixels), or its L2 norm (`metric="l2norm"`); computed from the guided noise
  when the pipeline tells us the guidance scale, else from the conditional half;
- starvation: metric x exp(starvation_scale x drop count), where a token's drop count grows each
  time it is not recomputed;
- of the S = int((1 - sample_ratio) x N) tokens to skip, int(S x (1 - high_ratio)) come from the low
  end of the sorted metric and int(S x high_ratio) from the high end; the middle is recomputed.
Dense steps at `error_reset_steps` (and every step outside [warmup_steps, end_step)) recompute every
token and refill the caches, resetting the accumulated error.

It runs on the same hooks as CAT (keys/values and module outputs of the skipped tokens are cached),
(the token engine, `cat/engine/`), so only the timeline below differs. Deviations: PixArt's learned-sigma channels are left out of the
metric (only the noise half counts); with PixArt's pipeline, which does not expose its guidance
scale, the metric comes from the conditional half.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..engine.state import GenerationState, keep_output, load_plan
from ..engine.stats import StepRecord
from ..engine.token_handle import TokenHandle
from .base import MethodConfig, architecture, check, is_int, is_num, min_ratio, register, scale_steps

METRICS = ("std", "l2norm")


class RASHandle(TokenHandle):
    """RAS applied through the token engine, following the timeline below."""


@register
@dataclass(frozen=True)
class RASConfig(MethodConfig):
    """Defaults: the authors' SD3 script (28 steps): sample ratio 0.5, dense until step 4, dense
    error-reset steps 12 and 20, starvation scale 1, high ratio 0.3, metric std.

    The authors' setting per architecture, `RASConfig.authors(family, num_steps)` (microsoft/RAS @a9c5ec8).
    MMDiT follows their SD3 script (the same diffusers transformer as SD3 and SD3.5; FLUX has no RAS code);
    PixArt their Lumina-Next-T2I script, the nearest code: a single-stream DiT with cross-attention to
    the text, as PixArt, where SD3 attends jointly.

    | field | MMDiT: `scripts/Stable_Diffusion_3_example.sh` (28 steps) | PixArt: `scripts/Lumina_Next_T2I_example.sh` (30 steps) |
    |---|---|---|
    | sample_ratio | 0.5 (`--sample_ratio`) | 0.5 (`--sample_ratio`; a moving ratio around it, below) |
    | warmup_steps | 4 (`--scheduler_start_step`), scaled by T/28, at least 4 | 4 (`--scheduler_start_step`), scaled by T/30, at least 4 |
    | error_reset_steps | 12, 20 (`--error_reset_steps`), scaled by T/28 | 12, 22 (`--error_reset_steps`), scaled by T/30 |
    | end_step | None (`--scheduler_end_step 28` = T) | None (`--scheduler_end_step 30` = T) |
    | starvation_scale | 1 (`--starvation_scale`) | 0.1 (not passed: `src/ras/utils/ras_argparser.py` default) |
    | high_ratio | 0.3 (`--high_ratio`) | 1.0 (not passed: `ras_argparser.py` default) |
    | metric | "std" (`--metric`) | "std" (`--metric`) |

    Step indices: their scripts give them per run, with no rule for other step counts; they are scaled here
    by T over the script's step count (`scale_steps`), the warm-up never below the 4 their README recommends
    as a minimum ("scheduler_start_step ... at least 4"). At 28 steps on MMDiT this is their script exactly.
    Where ours still deviates (PixArt): their Lumina script moves the number of recomputed tokens by
    `--skip_num_step 256` every `--skip_num_step_length 4` steps (`ras_manager.py`: sample ratio 0.69 falling
    to 0.31 over the sparse steps at their resolution); ours has no such knob and keeps 0.5 throughout.

    Attributes:
        sample_ratio: fraction of image tokens recomputed in a sparse step (1.0: every token); one that
            asks for less than one token is refused once the token count is known (`check_tokens`).
        warmup_steps: dense steps before sampling starts (authors' `scheduler_start_step`).
        end_step: first step after which all steps are dense again (None: the end of the schedule).
        error_reset_steps: dense steps in the middle of the schedule (0-based).
        starvation_scale: weight of the drop count in the selection metric.
        high_ratio: share of the skipped tokens taken from the high end of the metric.
        metric: "std" or "l2norm" of each token's predicted noise.
    """

    name: ClassVar[str] = "ras"
    handle: ClassVar[type] = RASHandle

    sample_ratio: float = 0.5
    warmup_steps: int = 4
    end_step: int | None = None
    error_reset_steps: tuple[int, ...] = (12, 20)
    starvation_scale: float = 1.0
    high_ratio: float = 0.3
    metric: str = "std"

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_reset_steps", tuple(self.error_reset_steps or ()))
        check(is_num(self.sample_ratio) and 0.0 < self.sample_ratio <= 1.0, self, "sample_ratio", "a float in (0, 1]")
        check(is_int(self.warmup_steps) and self.warmup_steps >= 1, self, "warmup_steps", "an integer >= 1")
        check(self.end_step is None or (is_int(self.end_step) and self.end_step > self.warmup_steps), self,
              "end_step", "null or an integer > warmup_steps")
        check(all(is_int(s) and s >= 0 for s in self.error_reset_steps), self, "error_reset_steps",
              "a list of step indices >= 0")
        check(is_num(self.starvation_scale) and self.starvation_scale >= 0, self, "starvation_scale", "a float >= 0")
        check(is_num(self.high_ratio) and 0.0 <= self.high_ratio <= 1.0, self, "high_ratio", "a float in [0, 1]")
        check(self.metric in METRICS, self, "metric", f"one of {', '.join(METRICS)}")

    def check_steps(self, num_steps: int) -> None:
        check(self.warmup_steps < num_steps, self, "warmup_steps",
              f"smaller than the number of steps ({num_steps}), or RAS changes nothing")

    def check_tokens(self, num_tokens: int) -> None:
        """Refuses a ratio that asks for less than one token (the authors' int rounding would still recompute
        a few): checked by the harness before loading a model, by the library at the first transformer call."""
        asked = self.sample_ratio * num_tokens
        check(round(asked) >= 1, self, "sample_ratio",
              f"large enough to ask for at least one token per sparse step: {self.sample_ratio:g} x {num_tokens} "
              f"image tokens = {asked:.3g} (the authors' rounding would recompute "
              f"{self.num_recomputed(num_tokens)}); {min_ratio(num_tokens)}")

    def timeline(self):
        """The step timeline the token engine's hooks follow (this module: `begin_step`, `end_step`)."""
        return sys.modules[__name__]

    @classmethod
    def for_steps(cls, num_steps: int) -> dict:
        """The authors' SD3 script at 28 steps, its step indices scaled: dense until step 4, dense resets
        at 12 and 20."""
        return {"warmup_steps": scale_steps(4, num_steps),
                "error_reset_steps": [scale_steps(12, num_steps), scale_steps(20, num_steps)]}

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their SD3 script on MMDiT, their Lumina-Next-T2I script on PixArt, step indices scaled (see the class
        docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            steps, resets, starvation, high = 28, (12, 20), 1.0, 0.3
        else:
            steps, resets, starvation, high = 30, (12, 22), 0.1, 1.0
        return {"sample_ratio": 0.5, "warmup_steps": max(4, scale_steps(4, num_steps, steps)),
                "error_reset_steps": tuple(scale_steps(s, num_steps, steps) for s in resets), "end_step": None,
                "starvation_scale": starvation, "high_ratio": high, "metric": "std"}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["RASConfig", "RASConfig"]:
        return (cls(sample_ratio=1.0),
                cls(warmup_steps=max(1, round(0.3 * num_steps)), error_reset_steps=(round(0.6 * num_steps),)))

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """All tokens in dense steps, `num_recomputed` in sparse ones (a step is sparse when the one before
        selected for it)."""
        k = self.num_recomputed(num_tokens)
        if k >= num_tokens:
            return [num_tokens] * num_steps
        return [k if s >= 1 and self.sparse(s, num_steps) else num_tokens for s in range(num_steps)]

    def num_recomputed(self, num_tokens: int) -> int:
        skip = int((1.0 - self.sample_ratio) * num_tokens)
        low, high = int(skip * (1.0 - self.high_ratio)), int(skip * self.high_ratio)
        return num_tokens - low - high

    def sparse(self, step: int, num_steps: int | None) -> bool:
        end = self.end_step if self.end_step is not None else num_steps
        return (self.warmup_steps <= step and (end is None or step < end)
                and step not in self.error_reset_steps)


def _active(config: RASConfig, n: int) -> bool:
    return config.num_recomputed(n) < n


def begin_step(state: GenerationState, config: RASConfig, grid: tuple[int, int]) -> None:
    state.step += 1
    state.grid = grid
    n = grid[0] * grid[1]
    if state.step == 0:
        config.check_tokens(n)
    sparse = _active(config, n) and config.sparse(state.step, state.num_steps) and state.active is not None
    next_sparse = _active(config, n) and config.sparse(state.step + 1, state.num_steps)
    state.record = not sparse and next_sparse  # a dense step before a sparse one fills the caches
    if sparse:
        load_plan(state)  # [B, K]
    else:
        state.index = None


def end_step(state: GenerationState, config: RASConfig, out: torch.Tensor) -> torch.Tensor:
    """Output caching for the skipped tokens, then the selection for the next step.  [B, N, D] -> [B, N, D]"""
    n = out.shape[1]
    phase = "pruned" if state.plan is not None else "full"
    record = StepRecord(state.step, phase, n if state.plan is None else state.plan.shape[1])
    if not _active(config, n):
        state.records.append(record)
        return out
    kept = keep_output(state, out, state.index)  # skipped tokens keep their previous output
    if state.plan is not None:
        out = kept  # the previous-output buffer: TransformerHook copies what it hands to the pipeline
        record.active = torch.zeros(state.active.shape[0], n, dtype=torch.bool, device=out.device).scatter_(
            1, state.active, True)
    if config.sparse(state.step + 1, state.num_steps):
        score = _metric(state, config, out)  # [P, N]
        if state.freq is None:
            state.freq = torch.zeros_like(score)  # drop counts
        score = score * torch.exp(config.starvation_scale * state.freq)
        order = score.argsort(dim=-1, stable=True)  # ascending
        skip = int((1.0 - config.sample_ratio) * n)
        low, high = int(skip * (1.0 - config.high_ratio)), int(skip * config.high_ratio)
        state.active = order[:, low:n - high]  # [P, K]
        dropped = torch.ones_like(state.freq, dtype=torch.bool).scatter_(1, state.active, False)
        state.freq = state.freq + dropped.to(state.freq.dtype)
        record.noise_magnitude = score
        record.staleness = state.freq
    state.records.append(record)
    return out


def _metric(state: GenerationState, config: RASConfig, out: torch.Tensor) -> torch.Tensor:
    """Per-token std (or L2 norm) over channels of the predicted noise, averaged over the token's pixels."""
    noise = out.float()
    if state.cfg_pairs:
        uncond, cond = noise.chunk(2)
        g = state.guidance_scale
        noise = uncond + g * (cond - uncond) if g is not None else cond
    b, n, d = noise.shape
    c_in, c_out = state.channels
    c_out = c_out or c_in or d
    pixels = noise.reshape(b, n, d // c_out, c_out)[..., : (c_in or c_out)]  # the noise half only
    per_pixel = pixels.std(dim=-1) if config.metric == "std" else torch.linalg.vector_norm(pixels, dim=-1)
    return per_pixel.mean(dim=-1)  # [P, N]
