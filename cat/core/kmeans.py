"""Seeded, batched k-means in torch on the input's device: greedy k-means++ seeding and Lloyd
iterations until the assignment stops changing, as scikit-learn's `KMeans` (the authors' choice).

Random draws come from a CPU generator (uniform numbers, turned into draws on the device by inverse
CDF, one copy to the device), so the result does not depend on the device's random number generator.
Centroids are means computed as a one-hot matrix product, which has no floating-point atomics: the same
labels on every run of a GPU (a scatter-add of floats sums in a different order each time).

The host synchronises only to test convergence, once every `CHECK_EVERY` iterations: iterating past
convergence changes nothing (the same labels give the same centroids, bit for bit), so the labels are
those of a test at every iteration, with at most 1 + iters / CHECK_EVERY host reads (16 at the authors'
300). k-means runs once per generation, at the clustering step, never in a pruned step. On the `meta`
device (shape-only MAC counting) the full iteration count runs.
"""

from __future__ import annotations

import math

import torch

INITS = ("k-means++", "random")
CHECK_EVERY = 20  # Lloyd iterations between two convergence tests (host reads)


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int, init: str = "k-means++") -> torch.Tensor:
    """Cluster labels of every token.  [B, N, D] -> [B, N] int64

    `iters` is the maximum number of Lloyd iterations; iteration stops early once no label changes.
    `init="random"` starts from k distinct random tokens instead of k-means++. A cluster that loses
    all its tokens keeps its previous centroid.
    """
    b, n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= number of tokens, got k={k} for {n} tokens")
    if init not in INITS:
        raise ValueError(f"unknown k-means init {init!r}; allowed: {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    if init == "random":
        centroids = x[:, torch.randperm(n, generator=gen)[:k].to(x.device)]  # [B, k, D]
    else:
        centroids = kmeans_plus_plus(x, k, gen)
    labels = _assign(x, centroids)
    ids = torch.arange(k, device=x.device)[None, :, None]  # [1, k, 1]
    done = 0
    while done < iters:
        for _ in range(min(CHECK_EVERY, iters - done)):
            previous = labels
            centroids = _means(x, labels, ids, centroids)
            labels = _assign(x, centroids)
        done += CHECK_EVERY
        if x.device.type != "meta" and torch.equal(labels, previous):
            break
    return labels


def _means(x: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's tokens; a cluster without tokens keeps its centroid.  [B, N, D], [B, N] -> [B, k, D]"""
    onehot = (labels[:, None, :] == ids).to(x.dtype)  # [B, k, N]
    counts = onehot.sum(-1, keepdim=True)  # [B, k, 1]
    return torch.where(counts > 0, (onehot @ x) / counts.clamp(min=1), centroids)


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant): the first
    centre is a uniformly drawn token; each next one is the best, by total squared distance, of
    2 + log(k) candidates drawn with probability proportional to the squared distance to the
    nearest centre so far.  [B, N, D] -> centroids [B, k, D]
    """
    b, n, d = x.shape
    trials = 2 + int(math.log(k))
    uniforms = torch.rand(k, b, trials, generator=gen, dtype=torch.float64).to(x.device)  # [k, B, T]
    batch = torch.arange(b, device=x.device)
    first = (uniforms[0, :, 0] * n).long().clamp(max=n - 1)  # [B]
    centroids = [x[batch, first]]  # [B, D] each
    closest = _sq_dist(x, centroids[0][:, None])[..., 0]  # [B, N]
    for i in range(1, k):
        cdf = closest.double().cumsum(dim=1)  # [B, N]
        target = uniforms[i] * cdf[:, -1:]  # [B, T]
        cand = torch.searchsorted(cdf, target).clamp(max=n - 1)  # [B, T]
        cand_x = x.gather(1, cand[..., None].expand(-1, -1, d))  # [B, T, D]
        dist = torch.minimum(closest[:, None, :], _sq_dist(x, cand_x).transpose(1, 2))  # [B, T, N]
        best = dist.sum(-1).argmin(dim=1)  # [B]
        centroids.append(cand_x[batch, best])
        closest = dist[batch, best]
    return torch.stack(centroids, dim=1)


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances of every token to every centre.  [B, N, D], [B, m, D] -> [B, N, m]"""
    return ((x * x).sum(-1)[..., None] - 2 * x @ c.transpose(1, 2) + (c * c).sum(-1)[:, None, :]).clamp(min=0)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per token.  [B, N, D], [B, k, D] -> [B, N]"""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every centroid.
    dist = (centroids * centroids).sum(-1)[:, None, :] - 2 * x @ centroids.transpose(1, 2)  # [B, N, k]
    return dist.argmin(dim=-1)
