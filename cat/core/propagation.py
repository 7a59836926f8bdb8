"""ClusCa's cluster-driven cache update (ClusCa, ACM MM 2025, arXiv 2509.10312) as pure batched
tensor functions: the authors' k-means, one representative token per cluster, and the propagation of the
representatives' fresh outputs to their clusters.

On a full step the image tokens are clustered (`lloyd_l1`: Lloyd iterations with L1 assignment, started
from the previous full step's centroids, or from K random tokens at the first). On a cached step each
cluster's representative is a uniformly drawn member (`one_per_cluster`); the module runs on the K
representatives only, and the cached output C [B, N, D] is updated (`propagate_`): the representatives' rows
take their fresh outputs, then every token mixes in its cluster representative's fresh output,

    C <- gamma * R[label] + (1 - gamma) * C,

gamma being the propagation ratio (0: the representatives' rows only). The representatives themselves end
at their fresh outputs (R = C on their rows).
"""

from __future__ import annotations

import torch


def distinct_centroids(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct tokens drawn uniformly (the same positions in every sample), as float32 centroids: no
    cluster starts empty.  [B, N, D] -> [B, k, D]"""
    index = torch.randperm(x.shape[1], generator=generator)[:k].to(x.device)  # [k]
    return x[:, index].float()


def random_centroids(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k tokens drawn uniformly with replacement per sample (the authors' 'random' init), as float32
    centroids.  [B, N, D] -> [B, k, D]"""
    b, n, _ = x.shape
    index = torch.randint(0, n, (b, k), generator=generator).to(x.device)  # [B, k]
    return rows(x, index).float()


def lloyd_l1(x: torch.Tensor, centroids: torch.Tensor, iters: int,
             early_stop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' k-means from `centroids`: each iteration assigns every token to its nearest centroid in
    L1 distance and moves each centroid to its tokens' mean (a cluster without tokens moves to 0, as their
    counts + 1e-8 do); it stops once the centroids move less than `torch.allclose(rtol=1e-4)`, at most
    `iters` times. Returns (labels [B, N], centroids [B, k, D] float32), as their loop does: the labels are
    those of the last assignment. The stopping test reads the device once per iteration (full steps only);
    on `meta`, or with `early_stop=False` (a fixed amount of work, nothing read back), every iteration runs.
    [B, N, D], [B, k, D] -> [B, N], [B, k, D]"""
    x = x.float()
    k = centroids.shape[1]
    check = early_stop and x.device.type != "meta"
    labels = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
    for _ in range(iters):
        labels = torch.cdist(x, centroids, p=1).argmin(dim=-1)  # [B, N]
        one_hot = torch.nn.functional.one_hot(labels, k).float()  # [B, N, k]
        counts = one_hot.sum(dim=1) + 1e-8  # [B, k]
        moved = one_hot.transpose(1, 2) @ x / counts[..., None]  # [B, k, D]
        if check and torch.allclose(centroids, moved, rtol=1e-4):
            break
        centroids = moved
    return labels, centroids


def one_per_cluster(labels: torch.Tensor, k: int, uniforms: torch.Tensor) -> torch.Tensor:
    """For every cluster 0 .. k-1, the member token with the largest uniform draw: a uniformly drawn
    representative (the authors' `select_one_fresh_index_per_cluster`). `uniforms` may carry leading
    dimensions (one draw per layer, say). A cluster without members gets token 0.
    [B, N], [..., B, N] -> [..., B, k]"""
    members = labels[:, None, :] == torch.arange(k, device=labels.device)[:, None]  # [B, k, N]
    masked = torch.where(members, uniforms[..., None, :], -torch.inf)  # [..., B, k, N]
    return masked.argmax(dim=-1)


def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The tokens' rows.  [B, N, D], [B, K] -> [B, K, D]"""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def propagate_(cache: torch.Tensor, index: torch.Tensor, fresh: torch.Tensor, labels: torch.Tensor,
               gamma: float) -> torch.Tensor:
    """Updates the cached output in place and returns it: the representatives' rows take their fresh outputs,
    then C <- gamma * R[label] + (1 - gamma) * C, representative j standing for cluster j (the authors'
    `propagation_update_cache` with one token per cluster; gamma = 0 is their `update_cache`).
    [B, N, D], [B, k], [B, k, D], [B, N] -> [B, N, D]"""
    cache.scatter_(1, index[..., None].expand(-1, -1, cache.shape[-1]), fresh.to(cache.dtype))
    if gamma:
        spread = rows(fresh.to(cache.dtype), labels)  # [B, N, D]: each token's cluster representative
        cache.copy_(spread * gamma + cache * (1 - gamma))
    return cache


def nearest_members(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """For every cluster, the member token nearest its centroid in L1 distance (the token standing for the
    cluster); a cluster without members gets token 0, as in `one_per_cluster`.
    [B, N, D], [B, N], [B, k, D] -> [B, k]"""
    k = centroids.shape[1]
    distance = (x.float() - rows(centroids, labels)).abs().sum(dim=-1)  # [B, N]: to its own centroid
    return one_per_cluster(labels, k, -distance)


def correct(forecast: torch.Tensor, index: torch.Tensor, fresh: torch.Tensor, labels: torch.Tensor, k: int,
            gamma: float) -> torch.Tensor:
    """A forecast corrected by exactly computed tokens: the computed tokens' rows take their fresh outputs,
    and every other token adds gamma times the mean forecast error (fresh - forecast) of the computed
    tokens of its cluster (nothing where its cluster has none). With one computed token per cluster this
    propagates each representative's error to its cluster; gamma = 0 replaces the computed rows only.
    [B, N, D], [B, K], [B, K, D], [B, N] -> [B, N, D]"""
    d = forecast.shape[-1]
    fresh = fresh.to(forecast.dtype)
    out = forecast
    if gamma:
        error = fresh - rows(forecast, index)  # [B, K, D]
        picked = labels.gather(1, index)  # [B, K]: the cluster of each computed token
        sums = forecast.new_zeros(forecast.shape[0], k, d).scatter_add_(1, picked[..., None].expand(-1, -1, d), error)
        counts = forecast.new_zeros(forecast.shape[0], k).scatter_add_(1, picked, torch.ones_like(error[..., 0]))
        mean = sums / counts.clamp(min=1)[..., None]  # [B, k, D]
        out = forecast + gamma * rows(mean, labels)  # [B, N, D]
    return out.scatter(1, index[..., None].expand(-1, -1, d), fresh)
