"""The token engine's per-generation state: one object, created fresh for every generation, read by every hook.

Nothing lives on classes or module globals: `GenerationState` holds the step counter, the selection
plan and its index tensors, the reference noise, the clusters, the staleness and the per-layer
feature caches.

The tensors a pruned step reads or writes are allocated once and then updated in place: the step's
index tensors (`StepIndex`, one per budget K), the previous output and the forecast coefficients
(`Buffers`), and each layer's `LayerCache`. Their storage stays put from the generation's first
cache-filling step to its last step, and across generations of the same shape (each cache context
keeps its `Buffers` and layer caches; see `Runtime`): what a captured CUDA graph needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .stats import GenerationStats, StepRecord, tensor_bytes
from .tokens import StepIndex, fits, static


@dataclass
class LayerCache:
    """Cached image-token features of one attention or feed-forward module (all tokens)."""

    key: torch.Tensor | None = None  # [B, heads, N, head_dim] (attention only)
    value: torch.Tensor | None = None  # [B, heads, N, head_dim] (attention only)
    out: torch.Tensor | None = None  # [B, N, C] output before the block's gate
    # [B, N, C] each token's output at its computation before the one in `out` (only while a timeline
    # forecasts module outputs: `GenerationState.forecast`)
    prev: torch.Tensor | None = None
    key_scale: torch.Tensor | None = None  # [] the scale of fp8 keys and values (`tokens.keep_kv`)
    value_scale: torch.Tensor | None = None


@dataclass
class Buffers:
    """One cache context's tensors that outlive a step: the index tensors of the pruned steps (by budget K),
    the previous output and the forecast coefficients. `heads` and `layouts` say which indices the
    engine's modules read (the head counts of their per-head caches, the joint sequences they gather),
    as they registered at install (`Runtime.uses`)."""

    heads: tuple[int, ...] = ()
    layouts: frozenset[str] = frozenset()
    indexes: dict[int, StepIndex] = field(default_factory=dict)
    prev_out: torch.Tensor | None = None  # [B, N, D] output tokens of the previous step
    rho: torch.Tensor | None = None  # [B, N, 1] forecast coefficients (`GenerationState.forecast`)


@dataclass
class GenerationState:
    """Mutable state of one generation. `step` is the only step counter: advanced once per transformer call."""

    cfg_pairs: bool = False
    guidance_scale: float | None = None  # the pipeline's CFG scale, when known
    channels: tuple[int | None, int | None] = (None, None)  # (latent in, model out) channels of the transformer
    num_steps: int | None = None  # length of the schedule when the pipeline tells us
    num_text: int = 0  # text tokens of the transformer's calls (its `encoder_hidden_states`)
    step: int = -1
    grid: tuple[int, int] | None = None
    index: StepIndex | None = None  # the current step's plan and index tensors, None = all tokens
    record: bool = False  # the current step fills the caches for all tokens
    active: torch.Tensor | None = None  # [P, K] selection for the next step
    ref: torch.Tensor | None = None  # [P, N, D] reference noise n_ref
    labels: torch.Tensor | None = None  # [P, N]
    freq: torch.Tensor | None = None  # [P, N] selection frequency f
    quotas: torch.Tensor | None = None  # [k] per-rank cluster quotas (constant within a generation)
    # [B, N, 1] per-token forecast coefficients of the current pruned step, None = unselected tokens reuse
    # their cached module outputs (see `tokens.update_output`); set by a timeline that forecasts
    forecast: torch.Tensor | None = None
    timestep: object = None  # the current call's `timestep` argument (a tensor or a number; None if not given)
    extra: dict = field(default_factory=dict)  # a timeline's own per-generation tensors (counted in cache_bytes)
    buffers: Buffers = field(default_factory=Buffers)
    # Per-layer caches by module name. Each is also held by its module (processor or feed-forward
    # wrapper), which reads it without a per-layer lookup; see `Runtime.layer_caches`.
    caches: dict[str, LayerCache] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)

    @property
    def plan(self) -> torch.Tensor | None:
        """[B, K] tokens recomputed in the current step, None = all."""
        return None if self.index is None else self.index.plan

    @property
    def prev_out(self) -> torch.Tensor | None:
        """[B, N, D] output tokens of the previous step (a buffer, updated in place)."""
        return self.buffers.prev_out

    def cache_bytes(self) -> int:
        """Bytes this generation holds: per-layer K/V and outputs (and older outputs when forecasting), previous
        output, reference, staleness, labels, index tensors, and a timeline's own tensors."""
        b = self.buffers
        return tensor_bytes([(c.key, c.value, c.out, c.prev) for c in self.caches.values()], b.prev_out, b.rho,
                            [i.tensors() for i in b.indexes.values()], self.ref, self.freq, self.labels, self.extra)

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


def load_plan(state: GenerationState, active: torch.Tensor | None = None) -> StepIndex:
    """Sets the plan of a pruned step: the selection (`state.active` unless given, [P, K]) copied, for both
    halves of a CFG batch, into the index tensors of budget K, which are built once and refilled in place;
    returns them (`state.index`).  [P, K] -> [B, K]"""
    active = state.active if active is None else active
    p, k = active.shape
    b = 2 * p if state.cfg_pairs else p
    n = state.grid[0] * state.grid[1]
    buffers = state.buffers
    signature = (b, k, n, state.num_text, buffers.heads, buffers.layouts, active.device,
                 torch.is_inference_mode_enabled())
    index = buffers.indexes.get(k)
    if index is None or index.signature != signature:
        index = buffers.indexes[k] = StepIndex(b, k, n, state.num_text, buffers.heads, buffers.layouts,
                                               active.device)
    state.index = index.load(active)
    return index


def keep_output(state: GenerationState, out: torch.Tensor, index: StepIndex | None = None) -> torch.Tensor:
    """Output caching into the previous-output buffer, in place; returns the buffer.

    Without an index the buffer takes all of `out`; with a pruned step's index, only the planned tokens'
    rows, and every other token keeps the previous step's output. The buffer is allocated once and is
    rewritten at the next step: whoever hands it out must copy it.  [B, N, D] -> [B, N, D]
    """
    buffers = state.buffers
    if index is None:
        if not fits(buffers.prev_out, out.shape, out.dtype, out.device):
            buffers.prev_out = static(torch.empty(out.shape, dtype=out.dtype, device=out.device))
        return buffers.prev_out.copy_(out)
    rows = out.reshape(-1, out.shape[-1]).index_select(0, index.rows)  # [B*K, D]
    return buffers.prev_out.index_put_((index.batch, index.plan), rows.view(*index.plan.shape, -1))
