"""Statistics every handle reports (`handle.stats`): one record per step, the same fields for every method.

`MethodStats.steps` holds a `StepRecord` per transformer call of the current or last generation's
schedule: its step, its phase ("full" when the method left the step as the full model runs it; the
method's own word otherwise: "pruned", "reuse", "partial", "forecast", "skipped", ...) and the image
tokens recomputed per sample where the method says. Token-selection methods also give per-token maps.
Each method's stats class adds its own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepRecord:
    """What happened at one step.

    `num_recomputed`: image tokens recomputed per sample (None where the method does not count tokens).
    Token-selection methods fill the per-token maps, one row per selection group (a prompt's uncond/cond
    pair shares one row): `active` marks the tokens recomputed in this step (None in full steps),
    `noise_magnitude` is r(i) computed from this step's output, `staleness` is f after this step.
    """

    step: int
    phase: str
    num_recomputed: int | None = None
    active: torch.Tensor | None = None  # [P, N] bool
    noise_magnitude: torch.Tensor | None = None  # [P, N]
    staleness: torch.Tensor | None = None  # [P, N]


@dataclass
class MethodStats:
    """Per-step statistics of the current or last generation (CPU tensors), common to every method."""

    steps: list[StepRecord] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def tokens_per_step(self) -> list[int | None]:
        """Image tokens recomputed per sample at each step."""
        return [r.num_recomputed for r in self.steps]

    def steps_in(self, *phases: str) -> tuple[int, ...]:
        """The steps whose phase is one of `phases`."""
        return tuple(r.step for r in self.steps if r.phase in phases)

    @property
    def has_selection(self) -> bool:
        """Whether the steps carry per-token selection maps (what the selection figure draws)."""
        return any(r.active is not None for r in self.steps)


@dataclass
class GenerationStats(MethodStats):
    """The token engine's statistics: also the token grid, whether CFG pairs share selections, and the
    cluster label of every token (methods that cluster)."""

    grid: tuple[int, int] | None = None
    num_image_tokens: int = 0
    cfg_pairs: bool = False
    labels: torch.Tensor | None = None  # [P, N] cluster id of each token

    @property
    def has_selection(self) -> bool:
        return self.labels is not None or super().has_selection


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct tensors found in `objects` (tensors, containers, or objects holding them)."""
    seen: dict[int, torch.Tensor] = {}

    def walk(obj, depth: int = 0) -> None:
        if isinstance(obj, torch.Tensor):
            seen.setdefault(id(obj), obj)
        elif depth > 4 or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            return
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            walk(vars(obj), depth + 1)

    for obj in objects:
        walk(obj)
    return sum(t.numel() * t.element_size() for t in seen.values())
