"""Per-generation state: one object, created fresh for every generation, read by every hook.

Nothing lives on classes or module globals: `GenerationState` holds the step counter, the selection
plan, the reference noise, the clusters, the staleness and the per-layer feature caches.

The tensors a pruned step reads or writes are allocated once per generation and then updated in
place (`plan`, `prev_out` and each layer's `LayerCache`), so their storage stays put across the
pruned steps of a generation (what a captured CUDA graph needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    """Cached image-token features of one attention or feed-forward module (all tokens)."""

    key: torch.Tensor | None = None  # [B, heads, N, head_dim] (attention only)
    value: torch.Tensor | None = None  # [B, heads, N, head_dim] (attention only)
    out: torch.Tensor | None = None  # [B, N, C] output before the block's gate


@dataclass
class StepRecord:
    """What happened at one step, for the overview figure and for logging.

    `active` marks the image tokens recomputed in this step (None in full steps); `noise_magnitude`
    is r(i) computed from this step's output; `staleness` is f after this step. One row per
    selection group (a prompt's uncond/cond pair shares one row).
    """

    step: int
    phase: str
    num_recomputed: int
    active: torch.Tensor | None = None  # [P, N] bool
    noise_magnitude: torch.Tensor | None = None  # [P, N]
    staleness: torch.Tensor | None = None  # [P, N]


@dataclass
class GenerationStats:
    """Statistics of the last generation, on the CPU."""

    grid: tuple[int, int] | None
    num_image_tokens: int
    cfg_pairs: bool
    labels: torch.Tensor | None  # [P, N] cluster id of each token
    steps: list[StepRecord]

    @property
    def tokens_per_step(self) -> list[int]:
        """Image tokens recomputed per sample at each step."""
        return [r.num_recomputed for r in self.steps]


@dataclass
class GenerationState:
    """Mutable state of one generation. `step` is the only step counter: advanced once per transformer call."""

    cfg_pairs: bool = False
    guidance_scale: float | None = None  # the pipeline's CFG scale, when known
    channels: tuple[int | None, int | None] = (None, None)  # (latent in, model out) channels of the transformer
    num_steps: int | None = None  # length of the schedule when the pipeline tells us
    step: int = -1
    grid: tuple[int, int] | None = None
    plan: torch.Tensor | None = None  # [B, K] tokens recomputed in the current step, None = all
    plan_buffer: torch.Tensor | None = None  # [B, K] the generation's plan storage (`plan` is it in pruned steps)
    record: bool = False  # the current step fills the caches for all tokens
    active: torch.Tensor | None = None  # [P, K] selection for the next step
    ref: torch.Tensor | None = None  # [P, N, D] reference noise n_ref
    labels: torch.Tensor | None = None  # [P, N]
    freq: torch.Tensor | None = None  # [P, N] selection frequency f
    prev_out: torch.Tensor | None = None  # [B, N, D] output tokens of the previous step (a buffer, updated in place)
    quotas: torch.Tensor | None = None  # [k] per-rank cluster quotas (constant within a generation)
    # Per-layer caches by module name. Each is also held by its module (processor or feed-forward
    # wrapper), which reads it without a per-layer lookup; see `Runtime.layer_caches`.
    caches: dict[str, LayerCache] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)

    def cache_bytes(self) -> int:
        """Bytes held by this generation's caches (per-layer K/V and outputs, previous output, reference)."""
        tensors = [t for c in self.caches.values() for t in (c.key, c.value, c.out) if t is not None]
        tensors += [t for t in (self.prev_out, self.ref) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def stats(self) -> GenerationStats:
        def cpu(t):
            if t is None or t.device.type == "meta":  # shape-only runs (MAC counting) have no data to copy
                return None if t is None else t.detach()
            return t.detach().cpu()

        n = self.grid[0] * self.grid[1] if self.grid else 0
        steps = [
            StepRecord(r.step, r.phase, r.num_recomputed, cpu(r.active), cpu(r.noise_magnitude), cpu(r.staleness))
            for r in self.records
        ]
        return GenerationStats(self.grid, n, self.cfg_pairs, cpu(self.labels), steps)
