"""The one configuration object of CAT Pruning.

Every constant of the method is a field here, defaulting to the value the authors' code uses for
SD3-medium at 1024x1024 and 28 steps. Paper symbols are named in the field docs; the mapping to the
paper is also tabulated in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .methods.base import MethodConfig, min_ratio

POLICIES = ("cat", "no_cluster", "no_staleness", "noise_only", "random")
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
            `cat.config.LEGACY` (default none: the authors' rules). For measuring the fixes only.
        policy: the selection rule. ``"cat"`` is the full method; ``"no_cluster"`` replaces the
            cluster walk by the globally noisiest tokens; ``"no_staleness"`` fills the whole budget
            from clusters and then by noise, ignoring staleness; ``"noise_only"`` takes the K
            noisiest tokens; ``"random"`` takes K uniformly random tokens (seeded).
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
        _check(all(x in LEGACY for x in self.legacy), "legacy", self.legacy, f"a list of {', '.join(LEGACY)}")
        _check(_is_num(self.keep_ratio) and 0.0 < self.keep_ratio <= 1.0, "keep_ratio", self.keep_ratio, "a float in (0, 1]")
        _check(_is_int(self.reference_offset) and self.reference_offset >= 1,
               "reference_offset", self.reference_offset, "an integer >= 1")
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= self.reference_offset + 1,
               "warmup_steps", self.warmup_steps,
               f"an integer >= reference_offset + 1 = {self.reference_offset + 1} "
               "(a reference step and a clustering step are needed)")
        _check(_is_int(self.num_clusters) and self.num_clusters >= 1,
               "num_clusters", self.num_clusters, "an integer >= 1 (and at most the number of image tokens)")
        _check(_is_num(self.cluster_feature_weight) and self.cluster_feature_weight >= 0.0, "cluster_feature_weight", self.cluster_feature_weight, "a float >= 0")
        _check(_is_int(self.kmeans_iters) and self.kmeans_iters >= 1, "kmeans_iters", self.kmeans_iters, "an integer >= 1")
        _check(_is_int(self.seed), "seed", self.seed, "an integer")
        _check(_is_num(self.staleness_decay) and 0.0 <= self.staleness_decay < 1.0, "staleness_decay", self.staleness_decay, "a float in [0, 1)")
        _check(_is_num(self.cluster_share) and 0.0 <= self.cluster_share <= 1.0, "cluster_share", self.cluster_share, "a float in [0, 1]")
        _check(_is_num(self.quota_unit) and 0.0 < self.quota_unit <= 1.0, "quota_unit", self.quota_unit, "a float in (0, 1]")
        _check(len(self.cluster_quotas) >= 1 and all(_is_int(q) and q >= 0 for q in self.cluster_quotas),
               "cluster_quotas", self.cluster_quotas, "a non-empty tuple of integers >= 0")
        _check(_is_num(self.first_cluster_cap) and 0.0 < self.first_cluster_cap <= 1.0, "first_cluster_cap", self.first_cluster_cap, "a float in (0, 1]")
        _check(self.policy in POLICIES, "policy", self.policy, f"one of {', '.join(POLICIES)}")
        _check(self.cache_dtype in CACHE_DTYPES, "cache_dtype", self.cache_dtype,
               "null (the model's dtype), bfloat16, float16 or float8_e4m3fn (keys/values; outputs then bfloat16)")

    def num_kept(self, num_tokens: int) -> int:
        """K, the number of image tokens recomputed per sample in a pruned step (at least 1)."""
        return min(num_tokens, max(1, round(self.keep_ratio * num_tokens)))

    def prunes(self, num_tokens: int) -> bool:
        """Whether pruned steps would recompute fewer than all tokens."""
        return self.num_kept(num_tokens) < num_tokens

    def timeline(self):
        """The step timeline the hooks follow (full -> reference -> cluster -> pruned)."""
        from . import timeline

        return timeline

    def check_steps(self, num_steps: int) -> None:
        """With no pruned step CAT would change nothing: the warm-up must be shorter than the schedule."""
        _check(self.warmup_steps < num_steps, "warmup_steps", self.warmup_steps,
               f"smaller than the number of steps ({num_steps}), or CAT changes nothing")

    def check_tokens(self, num_tokens: int) -> None:
        """Checks the settings that depend on the image size, once it is known (the harness before loading a
        model; the library at the first transformer call of a generation)."""
        _check(self.num_clusters <= num_tokens, "num_clusters", self.num_clusters,
               f"at most the number of image tokens ({num_tokens})")
        _check(round(self.keep_ratio * num_tokens) >= 1, "keep_ratio", self.keep_ratio,
               f"large enough to keep at least one token: round({self.keep_ratio:g} x {num_tokens}) = "
               f"{round(self.keep_ratio * num_tokens)} of the {num_tokens} image tokens; {min_ratio(num_tokens)}")


def token_schedule(config: CATConfig | None, num_inference_steps: int, num_image_tokens: int) -> list[int]:
    """Image tokens recomputed per sample at each step of a generation (the full model: all of them)."""
    if config is None or not config.prunes(num_image_tokens):
        return [num_image_tokens] * num_inference_steps
    k = config.num_kept(num_image_tokens)
    return [num_image_tokens if s < config.warmup_steps else k for s in range(num_inference_steps)]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"CATConfig.{field}={value!r} is invalid: {field} must be {allowed}.")
