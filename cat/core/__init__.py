"""CAT's algorithm as pure, batched tensor functions (torch only; no modules, no diffusers). The forecasting
caches' math is in its own modules: `forecast` (finite-difference factors, Taylor and scaled-Hermite forecasts)
and `propagation` (ClusCa's k-means, representatives and propagated update)."""

from .kmeans import kmeans, kmeans_plus_plus
from .scoring import (
    cluster_adjacency,
    cluster_features,
    cluster_max,
    cluster_saliency,
    positional_code,
    relative_noise,
    smooth_over_neighbours,
)
from .select import (
    carry_quotas,
    cluster_picks,
    cluster_sizes,
    mask_of,
    order_by,
    quota_per_rank,
    rank_within_cluster,
    select_first,
    select_noise,
    select_pruned,
    select_random,
    take,
    update_staleness,
    walk_clusters,
)

__all__ = [
    "carry_quotas",
    "cluster_picks",
    "cluster_sizes",
    "kmeans_plus_plus",
    "cluster_adjacency",
    "cluster_features",
    "cluster_max",
    "cluster_saliency",
    "kmeans",
    "mask_of",
    "order_by",
    "positional_code",
    "quota_per_rank",
    "rank_within_cluster",
    "relative_noise",
    "select_first",
    "select_noise",
    "select_pruned",
    "select_random",
    "smooth_over_neighbours",
    "take",
    "update_staleness",
    "walk_clusters",
]
