"""The step timeline: full -> reference -> cluster -> pruned.

Steps are 0-based. Steps 0 .. t0-1 run in full; step t0-1-reference_offset keeps the reference noise;
step t0-1 clusters the tokens, fills every layer's cache and makes the first selection; every later
step recomputes only the selected tokens and selects for the next one. The hooks call `begin_step`
before and `end_step` after each transformer call and apply the plan these return.

A pruned step allocates nothing that the blocks read and synchronises nothing with the host: the
plan is copied into a buffer allocated once per generation (`load_plan`), output caching writes the
recomputed rows into the previous-output buffer in place (`keep_output`), and the selection runs on
the device with quotas made at the clustering step.
"""

from __future__ import annotations

import torch

from . import core
from .config import CATConfig
from .state import GenerationState, StepRecord


def phase_of(step: int, config: CATConfig) -> str:
    t0 = config.warmup_steps
    if step >= t0:
        interval = getattr(config, "reuse_interval", 1)
        return "pruned" if (step - t0) % interval == 0 else "reuse"
    if step == t0 - 1:
        return "cluster"
    if step == t0 - 1 - config.reference_offset:
        return "reference"
    return "full"


def begin_step(state: GenerationState, config: CATConfig, grid: tuple[int, int]) -> None:
    """Advances the step counter and sets the plan of this step (None: all tokens)."""
    state.step += 1
    state.grid = grid
    n = grid[0] * grid[1]
    if state.step == 0:
        config.check_tokens(n)
    phase = phase_of(state.step, config)
    pruning = _pruning(state, config, n)
    state.record = pruning and phase == "cluster"
    if pruning and phase == "pruned":
        state.plan = load_plan(state)  # [B, K]
    elif pruning and phase == "reuse":
        # step-level reuse (cat_fora): no image token is recomputed; every module returns its cache
        b = state.active.shape[0] * (2 if state.cfg_pairs else 1)
        state.plan = state.active.new_empty(b, 0)
    else:
        state.plan = None


def end_step(state: GenerationState, config: CATConfig, out: torch.Tensor) -> torch.Tensor:
    """Output caching, reference, clustering, staleness and the next selection.  out [B, N, D] -> [B, N, D]"""
    n = out.shape[1]
    phase = phase_of(state.step, config)
    if not _pruning(state, config, n):
        state.records.append(StepRecord(state.step, phase, n))
        return out
    if phase == "reuse":
        # FORA's reuse: the blocks ran on cached attention / feed-forward outputs with this step's
        # gates and residuals; that output is kept as is, and the selection waits for the next
        # computed step.
        keep_output(state, out)
        state.records.append(StepRecord(state.step, phase, 0))
        return out
    raw = out  # the model's output for every token (unselected ones from cached features)
    # Unselected tokens keep the previous step's output, so the scheduler moves them with it. A full
    # step hands back its own output (the buffer holds a copy); a pruned step hands back the buffer.
    kept = keep_output(state, out, state.plan)
    out = raw if state.plan is None else kept
    # r, saliency and clusters come from the raw output, as in the authors' code (before output caching)
    scored = out if "scored_after_caching" in config.legacy else raw
    cond = scored[scored.shape[0] // 2 :] if state.cfg_pairs else scored  # [P, N, D]
    if "all_output_channels" not in config.legacy:
        cond = noise_channels(cond, state.channels)
    record = StepRecord(state.step, phase, n if state.plan is None else state.plan.shape[1])
    if state.plan is not None:
        record.active = core.mask_of(state.active, n)

    if phase == "reference":
        state.ref = cond.clone()
    elif phase in ("cluster", "pruned"):
        delta = (cond - state.ref).float()  # [P, N, D]
        r = torch.linalg.vector_norm(delta, dim=-1)  # [P, N]
        if phase == "cluster":
            if config.policy in ("cat", "no_staleness"):
                feats = core.cluster_features(cond, state.grid, config.cluster_feature_weight)
                init = "random" if "random_kmeans_init" in config.legacy else "k-means++"
                state.labels = core.kmeans(feats, config.num_clusters, config.kmeans_iters, config.seed, init)
            state.freq = torch.zeros_like(r)
            state.quotas = quotas(config, n, r.device)
        else:
            state.freq = core.update_staleness(state.freq, state.active, config.staleness_decay)
        state.active = select(config, state, r, delta, first=phase == "cluster")
        record.noise_magnitude = r
        record.staleness = state.freq
    state.records.append(record)
    return out


def select(config: CATConfig, state: GenerationState, r: torch.Tensor, delta: torch.Tensor, first: bool) -> torch.Tensor:
    """The next step's tokens under the configured policy.  -> [P, K]"""
    p, n = r.shape
    budget = config.num_kept(n)
    if config.policy == "random":
        return core.select_random((p, n), budget, config.seed * 100_003 + state.step, r.device)
    if config.policy == "noise_only" or (config.policy == "no_cluster" and first):
        return core.select_noise(r, budget)
    if state.quotas is None:  # end_step makes them at the clustering step; this is for direct callers
        state.quotas = quotas(config, n, r.device)
    cluster_budget = round(config.cluster_share * budget)
    if config.policy == "no_cluster":
        # One cluster covering the whole image: the cluster part becomes the globally noisiest tokens.
        one = torch.zeros_like(r, dtype=torch.long)
        return core.select_pruned(r, r.new_zeros(p, 1), one, state.freq, budget, cluster_budget, state.quotas)
    k = config.num_clusters
    if first:
        adj = core.cluster_adjacency(state.labels, state.grid, k) if config.smooth_first else None
        saliency = core.cluster_saliency(delta, state.labels, k, adj)
        cap = max(1, round(config.first_cluster_cap * budget))
        return core.select_first(r, saliency, state.labels, budget, cap,
                                 carry="first_shortfall_to_noise" not in config.legacy)
    saliency = core.cluster_saliency(delta, state.labels, k)
    per_rank = state.quotas
    if config.policy == "no_staleness":
        return core.select_pruned(r, saliency, state.labels, state.freq, budget, budget, per_rank, use_staleness=False)
    return core.select_pruned(r, saliency, state.labels, state.freq, budget, cluster_budget, per_rank,
                              cap_clusters="uncapped_cluster_picks" not in config.legacy)


def quotas(config: CATConfig, num_tokens: int, device: torch.device) -> torch.Tensor:
    """Per-rank cluster quotas in tokens for the pruned steps' selection.  -> [k]

    Constant within a generation; made once, at the clustering step, so that no pruned step copies a
    tensor from the host. `no_cluster` has one cluster whose quota is the cluster share of the budget.
    """
    budget = config.num_kept(num_tokens)
    if config.policy == "no_cluster":
        return torch.tensor([round(config.cluster_share * budget)], device=device)
    unit = max(1, round(config.quota_unit * budget))
    return core.quota_per_rank(config.num_clusters, config.cluster_quotas, unit, device)


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


def noise_channels(out: torch.Tensor, channels: tuple[int | None, int | None]) -> torch.Tensor:
    """The noise prediction of each token's output, without a learned-sigma model's variance channels.

    Tokens hold (patch pixels x output channels); PixArt predicts [epsilon, variance] per pixel
    (output channels = 2 x latent channels), and the authors' score is the noise. [B, N, D] -> [B, N, D']
    """
    c_in, c_out = channels
    if not c_in or not c_out or c_out == c_in or out.shape[-1] % c_out:
        return out
    b, n, d = out.shape
    return out.reshape(b, n, d // c_out, c_out)[..., :c_in].reshape(b, n, -1)


def _pruning(state: GenerationState, config: CATConfig, num_tokens: int) -> bool:
    """Whether this generation has any pruned step (else CAT leaves every step untouched)."""
    if not config.prunes(num_tokens):
        return False
    return state.num_steps is None or state.num_steps > config.warmup_steps
