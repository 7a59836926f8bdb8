"""CAT Pruning: cluster-aware token pruning (Cheng, Chen, Jia 2025, arXiv 2502.00433).

The config (`CATConfig`: every constant of the method is a field, defaulting to the value the authors'
code uses for SD3-medium at 1024x1024 and 28 steps; paper symbols are named in the field docs and
tabulated in the README), the step timeline, and the handle, which runs on the token engine
(`cat/engine/`).

The step timeline: full -> reference -> cluster -> pruned. Steps are 0-based. Steps 0 .. t0-1 run in
full; step t0-1-reference_offset keeps the reference noise; step t0-1 clusters the tokens, fills every
layer's cache and makes the first selection; every later step recomputes only the selected tokens and
selects for the next one. The engine's hooks call `begin_step` before and `end_step` after each
transformer call and apply the plan these return.

A pruned step allocates nothing that the blocks read and synchronises nothing with the host: the plan
is copied into index buffers built once (`load_plan`), output caching writes the recomputed rows into
the previous-output buffer in place (`keep_output`), and the selection runs on the device with quotas
made at the clustering step (the `random` policy draws on the device, from a generator of the device
seeded per step).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from .. import core
from ..engine.state import GenerationState, keep_output, load_plan
from ..engine.stats import StepRecord
from ..engine.token_handle import TokenHandle, check_cache_dtype
from ..families import family_of_class
from .base import MethodConfig, architecture, check, is_int as _is_int, is_num as _is_num, min_ratio, register

POLICIES = ("cat", "no_cluster", "no_staleness", "noise_only", "random")
POLICIES_WITHOUT_CLUSTERS = ("no_cluster", "noise_only", "random")
# What the policies without clusters never read: runs that differ only in these are the same run.
CLUSTER_FIELDS = ("num_clusters", "cluster_feature_weight", "kmeans_iters", "first_cluster_cap", "smooth_first")
CACHE_DTYPES = (None, "bfloat16", "float16", "float8_e4m3fn")
# Selection behaviours of this project's first version, each replaced by the authors' rule; naming one
# in `legacy` restores it (to measure what each fix changes).
LEGACY = (
    "scored_after_caching",  # r and saliency from the output after output caching (stale rows included)
    "uncapped_cluster_picks",  # stale picks of ranks >= 1 on top of the cluster share (up to ~30% of K)
    "first_shortfall_to_noise",  # first selection: a cluster's shortfall filled by global noise
    "all_output_channels",  # learned-sigma models: the variance channels enter r and the clustering
    "random_kmeans_init",  # k-means from k random tokens instead of k-means++
)


@register
@dataclass(frozen=True)
class CATConfig(MethodConfig):
    """Validated, immutable CAT settings.

    Attributes:
        keep_ratio: alpha, the fraction of image tokens recomputed in each pruned step. K =
            round(keep_ratio * image tokens). 1.0 disables pruning. A ratio that keeps no token (K = 0)
            is refused once the token count is known (`check_tokens`).
        warmup_steps: t0, the number of full steps (steps 0 .. t0-1) before pruning starts. The last
            full step makes the first selection, the one `reference_offset` steps earlier keeps the
            reference noise n_ref, so at least `reference_offset + 1` full steps are needed.
        reference_offset: steps between the reference step and the first selection step (authors: step 6
            is the reference and step 7 selects for step 8, so 1).
        num_clusters: number of k-means clusters over the image tokens (authors: 20).
        cluster_feature_weight: weight of the noise in the clustering features; the rest of the
            feature is the token's (row/H, col/W) position, so clusters are compact regions (0.05).
        kmeans_iters: maximum Lloyd iterations of the k-means (k-means++ seeding; it stops when no
            label changes, as scikit-learn's KMeans, the authors' choice, with max_iter 300).
        seed: seeds the k-means initialisation and the `random` policy.
        staleness_decay: decay of the selection frequency f <- decay * f + 1[selected] (0.5).
        cluster_share: share of the budget K filled from salient clusters in pruned steps (0.25);
            the rest goes to the stalest tokens.
        quota_unit: one quota unit as a fraction of K (0.05).
        cluster_quotas: quota units per saliency rank of a cluster, the last value repeating for the
            remaining ranks (rank 0 gets 3 units, rank 1 two, others one).
        first_cluster_cap: at the first selection the whole budget comes from clusters, walking them
            by saliency: each takes its noisiest tokens, up to this fraction of K plus the shortfall of
            the clusters before it (0.10); raised to 1/k when k clusters of this size cannot fill K.
        smooth_first: at the first selection, smooth cluster saliency over grid-adjacent clusters
            (2 * mean + max over the cluster and its neighbours).
        prune_attention: recompute only the selected tokens in the attention projections.
        prune_ff: recompute only the selected tokens in the image feed-forward.
        cache_dtype: storage dtype of the caches (None: the model's). "bfloat16"/"float16" halve an fp32
            model's cache memory; "float8_e4m3fn" stores keys and values in fp8 (outputs in bfloat16).
        legacy: selection behaviours of this project's first version to restore, from
            `cat.methods.cat.LEGACY` (default none: the authors' rules). For measuring the fixes only.
        policy: the selection rule. ``"cat"`` is the full method; ``"no_cluster"`` replaces the
            cluster walk by the globally noisiest tokens; ``"no_staleness"`` fills the whole budget
            from clusters and then by noise, ignoring staleness; ``"noise_only"`` takes the K
            noisiest tokens; ``"random"`` takes K uniformly random tokens (seeded).

    The authors' setting, `CATConfig.authors(family, num_steps)` (ada-cheng/CAT-Pruning @3b88889, for
    SD3-medium only: it is the nearest code for FLUX and PixArt as well, so every family gets the same
    values). `num_clusters` (20 in their code) is left out: it stays with the model config, as a model
    with few tokens needs fewer; `seed`, `policy`, `cache_dtype` and `legacy` are this project's.

    | field | value | source (`example_sd3.py`; `qcache/modules/proj_out.py`, `QCacheProjOut.forward`) |
    |---|---|---|
    | keep_ratio | 0.3 | example_sd3.py `select_factor` |
    | warmup_steps | 8 at 28 steps; the share kept at other step counts (`authors_warmup`) | example_sd3.py `stop_idx_dict` 5: the reference at step 6, the first selection at step 7 |
    | reference_offset | 1 | `forward`: the noise cached at one step, the clusters made at the next |
    | cluster_feature_weight | 0.05 | `add_positional_encoding` (`features*0.05 + pos_enc`) |
    | kmeans_iters | 300 | `forward`: scikit-learn's `KMeans(n_clusters=20, random_state=0)`, max_iter 300 |
    | staleness_decay | 0.5 | `forward` (`self.counts *= 0.5`) |
    | cluster_share | 0.25 | `forward` (`[:int(slice_idx * 0.25)]`) |
    | quota_unit, cluster_quotas | 0.05, (3, 2, 1) | `forward` (`slice_idx // 5 * 0.25`, `k_ * (3-i)`) |
    | first_cluster_cap | 0.10 | `forward` (`slice_idx // 10` per cluster at the first selection) |
    | smooth_first | True | `forward` (`graph_pool`: mean, mean and max over grid neighbours) |
    | prune_attention, prune_ff | True, True | example_sd3.py `select_factor` of `joint_attn` and `ff` |

    Their example runs 28 steps and gives no rule for other counts; the warm-up keeps its share of the
    steps (as `for_steps`). Where ours deviates from their code: docs/method.md.
    """

    name: ClassVar[str] = "cat"

    keep_ratio: float = 0.3
    warmup_steps: int = 8
    reference_offset: int = 1
    num_clusters: int = 20
    cluster_feature_weight: float = 0.05
    kmeans_iters: int = 300
    seed: int = 0
    staleness_decay: float = 0.5
    cluster_share: float = 0.25
    quota_unit: float = 0.05
    cluster_quotas: tuple[int, ...] = (3, 2, 1)
    first_cluster_cap: float = 0.10
    smooth_first: bool = True
    prune_attention: bool = True
    prune_ff: bool = True
    policy: str = "cat"
    cache_dtype: str | None = None
    legacy: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cluster_quotas", tuple(self.cluster_quotas))
        object.__setattr__(self, "legacy", tuple(self.legacy))
        check(all(x in LEGACY for x in self.legacy), self, "legacy", f"a list of {', '.join(LEGACY)}")
        check(_is_num(self.keep_ratio) and 0.0 < self.keep_ratio <= 1.0, self, "keep_ratio", "a float in (0, 1]")
        check(_is_int(self.reference_offset) and self.reference_offset >= 1, self,
              "reference_offset", "an integer >= 1")
        check(_is_int(self.warmup_steps) and self.warmup_steps >= self.reference_offset + 1, self,
              "warmup_steps",
              f"an integer >= reference_offset + 1 = {self.reference_offset + 1} "
              "(a reference step and a clustering step are needed)")
        check(_is_int(self.num_clusters) and self.num_clusters >= 1, self,
              "num_clusters", "an integer >= 1 (and at most the number of image tokens)")
        check(_is_num(self.cluster_feature_weight) and self.cluster_feature_weight >= 0.0, self, "cluster_feature_weight", "a float >= 0")
        check(_is_int(self.kmeans_iters) and self.kmeans_iters >= 1, self, "kmeans_iters", "an integer >= 1")
        check(_is_int(self.seed), self, "seed", "an integer")
        check(_is_num(self.staleness_decay) and 0.0 <= self.staleness_decay < 1.0, self, "staleness_decay", "a float in [0, 1)")
        check(_is_num(self.cluster_share) and 0.0 <= self.cluster_share <= 1.0, self, "cluster_share", "a float in [0, 1]")
        check(_is_num(self.quota_unit) and 0.0 < self.quota_unit <= 1.0, self, "quota_unit", "a float in (0, 1]")
        check(len(self.cluster_quotas) >= 1 and all(_is_int(q) and q >= 0 for q in self.cluster_quotas), self,
              "cluster_quotas", "a non-empty tuple of integers >= 0")
        check(_is_num(self.first_cluster_cap) and 0.0 < self.first_cluster_cap <= 1.0, self, "first_cluster_cap", "a float in (0, 1]")
        check(self.policy in POLICIES, self, "policy", f"one of {', '.join(POLICIES)}")
        check(self.cache_dtype in CACHE_DTYPES, self, "cache_dtype",
              "null (the model's dtype), bfloat16, float16 or float8_e4m3fn (keys/values; outputs then bfloat16)")

    def num_kept(self, num_tokens: int) -> int:
        """K, the number of image tokens recomputed per sample in a pruned step (at least 1)."""
        return min(num_tokens, max(1, round(self.keep_ratio * num_tokens)))

    def prunes(self, num_tokens: int) -> bool:
        """Whether pruned steps would recompute fewer than all tokens."""
        return self.num_kept(num_tokens) < num_tokens

    def timeline(self):
        """The step timeline the token engine's hooks follow (this module: `begin_step`, `end_step`)."""
        return sys.modules[__name__]

    @staticmethod
    def authors_warmup(num_steps: int) -> int:
        """t0 at `num_steps` steps: the authors use 8 full steps of 28; other step counts keep that share,
        round(8 / 28 * steps), at least the 2 a reference and a clustering step need (50 -> 14, 20 -> 6)."""
        return max(2, round(8 * int(num_steps) / 28))

    @classmethod
    def for_steps(cls, num_steps: int) -> dict:
        return {"warmup_steps": cls.authors_warmup(num_steps)}

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """The authors' SD3-medium setting for every family (see the class docstring)."""
        architecture(cls, family, num_steps)
        return {"keep_ratio": 0.3, "warmup_steps": cls.authors_warmup(num_steps), "reference_offset": 1,
                "cluster_feature_weight": 0.05, "kmeans_iters": 300, "staleness_decay": 0.5, "cluster_share": 0.25,
                "quota_unit": 0.05, "cluster_quotas": (3, 2, 1), "first_cluster_cap": 0.10, "smooth_first": True,
                "prune_attention": True, "prune_ff": True}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["CATConfig", "CATConfig"]:
        warmup = max(2, round(0.4 * num_steps))
        return cls(keep_ratio=1.0, warmup_steps=warmup, num_clusters=4), cls(warmup_steps=warmup, num_clusters=4)

    def key_ignores(self) -> tuple[str, ...]:
        """The clustering fields, under the policies that make no clusters."""
        return CLUSTER_FIELDS if self.policy in POLICIES_WITHOUT_CLUSTERS else ()

    def base(self) -> CATConfig | None:
        """A variant of CAT (a subclass: a schedule, a forecast, a hybrid) is timed against plain CAT with
        the same CAT fields; CAT itself varies none."""
        if type(self) is CATConfig:
            return None
        return CATConfig(**{f.name: getattr(self, f.name) for f in fields(CATConfig) if f.init})

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """All tokens in the warm-up, K in pruned steps (none in `reuse` steps); all of them when nothing
        is pruned (K = N, or no step after the warm-up)."""
        if not self.prunes(num_tokens) or num_steps <= self.warmup_steps:
            return [num_tokens] * num_steps
        per_phase = {"pruned": self.num_kept(num_tokens), "reuse": 0}
        return [per_phase.get(phase_of(s, self), num_tokens) for s in range(num_steps)]

    def check_model(self, transformer_class: str, device: str) -> None:
        family = family_of_class(transformer_class)
        if self.cache_dtype is not None and family is not None:
            check_cache_dtype(self.cache_dtype, family, device)

    def check_steps(self, num_steps: int) -> None:
        """With no pruned step CAT would change nothing: the warm-up must be shorter than the schedule."""
        check(self.warmup_steps < num_steps, self, "warmup_steps",
              f"smaller than the number of steps ({num_steps}), or CAT changes nothing")

    def check_tokens(self, num_tokens: int) -> None:
        """Checks the settings that depend on the image size, once it is known (the harness before loading a
        model; the library at the first transformer call of a generation)."""
        check(self.num_clusters <= num_tokens, self, "num_clusters",
              f"at most the number of image tokens ({num_tokens})")
        check(round(self.keep_ratio * num_tokens) >= 1, self, "keep_ratio",
              f"large enough to keep at least one token: round({self.keep_ratio:g} x {num_tokens}) = "
              f"{round(self.keep_ratio * num_tokens)} of the {num_tokens} image tokens; {min_ratio(num_tokens)}")


def token_schedule(config: CATConfig | None, num_inference_steps: int, num_image_tokens: int) -> list[int]:
    """Image tokens recomputed per sample at each step of a generation (the full model: all of them)."""
    if config is None:
        return [num_image_tokens] * num_inference_steps
    return config.offline_schedule(num_inference_steps, num_image_tokens)


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
        load_plan(state)  # [B, K]
    elif pruning and phase == "reuse":
        # step-level reuse (cat_fora): no image token is recomputed; every module returns its cache
        load_plan(state, state.active[:, :0])  # [B, 0]
    else:
        state.index = None


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
    kept = keep_output(state, out, state.index)
    out = raw if state.index is None else kept
    # r, saliency and clusters come from the raw output, as in the authors' code (before output caching)
    scored = out if "scored_after_caching" in config.legacy else raw
    cond = scored[scored.shape[0] // 2 :] if state.cfg_pairs else scored  # [P, N, D]
    if "all_output_channels" not in config.legacy:
        cond = noise_channels(cond, state.channels)
    record = StepRecord(state.step, phase, n if state.plan is None else state.plan.shape[1])
    if state.plan is not None:
        record.active = core.mask_of(state.active, n)  # [P, N] bool

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
            state.freq = core.update_staleness(state.freq, record.active, config.staleness_decay)
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


class CATHandle(TokenHandle):
    """An applied CAT patch (or any method whose config's `timeline()` drives the token engine: cat_fora).
    `remove()` (or a `with` block) restores the model exactly."""


CATConfig.handle = CATHandle
