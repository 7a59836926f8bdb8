"""Seeded, batched k-means in torch on the input's device.

A fixed number of Lloyd iterations and no data-dependent control flow: no host synchronisation, and
it runs on the `meta` device for shape-only MAC counting.
"""

from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Cluster labels of every token.  [B, N, D] -> [B, N] int64

    The initial centroids are k distinct tokens drawn with a CPU generator, so the result does not
    depend on the device's random number generator. A cluster that loses all its tokens keeps its
    previous centroid.
    """
    b, n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= number of tokens, got k={k} for {n} tokens")
    gen = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=gen)[:k].to(x.device)  # [k]
    x = x.float()
    centroids = x[:, init]  # [B, k, D]
    labels = _assign(x, centroids)
    for _ in range(iters):
        sums = torch.zeros(b, k, d, device=x.device).scatter_add_(1, labels[..., None].expand(-1, -1, d), x)  # [B, k, D]
        counts = torch.zeros(b, k, device=x.device).scatter_add_(1, labels, torch.ones_like(labels, dtype=x.dtype))  # [B, k]
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centroids)
        labels = _assign(x, centroids)
    return labels


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per token.  [B, N, D], [B, k, D] -> [B, N]"""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every centroid.
    dist = (centroids * centroids).sum(-1)[:, None, :] - 2 * x @ centroids.transpose(1, 2)  # [B, N, k]
    return dist.argmin(dim=-1)
