"""The token engine's per-generation state: one object, created fresh for every generation, read by every hook.

Nothing lives on classes or module globals: `GenerationState` holds the step counter, the selection
plan, the reference noise, the clusters, the staleness and the per-layer feature caches.

The tensors a pruned step reads or writes are allocated once per generation and then updated in
place (`plan`, `prev_out` and each layer's `LayerCache`), so their storage stays put across the
pruned steps of a generation (what a captured CUDA graph needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .stats import GenerationStats, StepRecord, tensor_bytes


@dataclass
class LayerCache:
    """Cached image-token features of one attention or feed-forward module (all tokens)."""

    key: torch.Tensor | None = None  # [B, heads, N, head_dim] (attention only)
    value: torch.Tensor | None = None  # [B, heads, N, head_dim] (attention only)
    out: torch.Tensor | None = None  # [B, N, C] output before the block's gate
    # [B, N, C] each token's output at its computation before the one in `out` (only while a timeline
    # forecasts module outputs: `GenerationState.forecast`)
    prev: torch.Tensor | None = None


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
    # [B, N, 1] per-token forecast coefficients of the current pruned step, None = unselected tokens reuse
    # their cached module outputs (see `tokens.update_output`); set by a timeline that forecasts
    forecast: torch.Tensor | None = None
    timestep: object = None  # the current call's `timestep` argument (a tensor or a number; None if not given)
    extra: dict = field(default_factory=dict)  # a timeline's own per-generation tensors (counted in cache_bytes)
    # Per-layer caches by module name. Each is also held by its module (processor or feed-forward
    # wrapper), which reads it without a per-layer lookup; see `Runtime.layer_caches`.
    caches: dict[str, LayerCache] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)

    def cache_bytes(self) -> int:
        """Bytes this generation holds: per-layer K/V and outputs (and older outputs when forecasting), previous
        output, reference, staleness, labels, and a timeline's own tensors."""
        return tensor_bytes([(c.key, c.value, c.out, c.prev) for c in self.caches.values()], self.prev_out,
                            self.ref, self.freq, self.labels, self.forecast, self.extra)

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
        return GenerationStats(steps=steps, grid=self.grid, num_image_tokens=n, cfg_pairs=self.cfg_pairs,
                               labels=cpu(self.labels))


def load_plan(state: GenerationState) -> torch.Tensor:
    """The plan of a pruned step: the selection `state.active` copied, for both halves of a CFG batch,
    into the generation's plan buffer, which is allocated once and returned.  [P, K] -> [B, K]"""
    active = state.active
    p, k = active.shape
    b = 2 * p if state.cfg_pairs else p
    buf = state.plan_buffer
    if buf is None or buf.shape != (b, k) or buf.dtype != active.dtype or buf.device != active.device:
        buf = state.plan_buffer = torch.empty(b, k, dtype=active.dtype, device=active.device)
    buf.view(b // p, p, k).copy_(active)  # [uncond, cond] halves share one selection
    return buf


def keep_output(state: GenerationState, out: torch.Tensor, plan: torch.Tensor | None = None) -> torch.Tensor:
    """Output caching into the generation's previous-output buffer, in place; returns the buffer.

    Without a plan the buffer takes all of `out`; with one, only the planned tokens' rows, and every
    other token keeps the previous step's output. The buffer is allocated once per generation and is
    rewritten at the next step: whoever hands it out must copy it.  [B, N, D] -> [B, N, D]
    """
    buf = state.prev_out
    if plan is None:
        if buf is None or buf.shape != out.shape or buf.dtype != out.dtype or buf.device != out.device:
            buf = state.prev_out = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        return buf.copy_(out)
    index = plan[..., None].expand(-1, -1, out.shape[-1])  # [B, K, D]
    return buf.scatter_(1, index, out.gather(1, index))
