"""Token and cluster scores: relative noise magnitude, clustering features, cluster saliency.

Shapes: B samples, N image tokens on an (h, w) grid, D output channels per token, k clusters.
"""

from __future__ import annotations

import torch


def relative_noise(noise: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """r(i) = || n_t(i) - n_ref(i) ||_2 per token.  [B, N, D] x2 -> [B, N]"""
    return torch.linalg.vector_norm((noise - ref).float(), dim=-1)


def positional_code(h: int, w: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Per-token position code: the first half of the channels is row/h, the second col/w.  -> [N, dim]"""
    rows = torch.arange(h, device=like.device, dtype=torch.float32) / h  # [h]
    cols = torch.arange(w, device=like.device, dtype=torch.float32) / w  # [w]
    row = rows[:, None].expand(h, w).reshape(-1, 1)  # [N, 1]
    col = cols[None, :].expand(h, w).reshape(-1, 1)  # [N, 1]
    half = dim // 2
    return torch.cat([row.expand(-1, half), col.expand(-1, dim - half)], dim=1)  # [N, dim]


def cluster_features(noise: torch.Tensor, grid: tuple[int, int], weight: float) -> torch.Tensor:
    """k-means features: weight * n(i) + position code, so clusters are compact regions.  [B, N, D] -> [B, N, D]"""
    h, w = grid
    return weight * noise.float() + positional_code(h, w, noise.shape[-1], noise)[None]


def cluster_max(delta: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Channel-wise max of `delta` over the tokens of each cluster; empty clusters give 0.

    [B, N, D], [B, N] -> [B, k, D]
    """
    b, _, d = delta.shape
    out = torch.zeros(b, k, d, device=delta.device, dtype=torch.float32)  # what an empty cluster keeps
    index = labels[:, :, None].expand(-1, -1, d)  # [B, N, D]
    return out.scatter_reduce_(1, index, delta.float(), reduce="amax", include_self=False)  # [B, k, D]


def cluster_adjacency(labels: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Clusters that touch on the token grid (4-neighbourhood), each cluster adjacent to itself.

    [B, N] -> [B, k, k] bool
    """
    h, w = grid
    b = labels.shape[0]
    lab = labels.view(b, h, w)
    pairs = [
        (lab[:, :, :-1].reshape(b, -1), lab[:, :, 1:].reshape(b, -1)),  # horizontal neighbours
        (lab[:, :-1, :].reshape(b, -1), lab[:, 1:, :].reshape(b, -1)),  # vertical neighbours
    ]
    adj = torch.zeros(b, k * k, device=labels.device, dtype=torch.bool)
    ones = torch.ones(1, device=labels.device, dtype=torch.bool)
    for a, c in pairs:
        adj.scatter_(1, a * k + c, ones.expand_as(a))
        adj.scatter_(1, c * k + a, ones.expand_as(a))
    adj = adj.view(b, k, k)
    return adj | torch.eye(k, device=labels.device, dtype=torch.bool)[None]


def smooth_over_neighbours(sal: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """2 * mean + max over each cluster and its neighbours, channel-wise.  [B, k, D], [B, k, k] -> [B, k, D]"""
    a = adj.to(sal.dtype)  # [B, k, k]
    mean = (a @ sal) / a.sum(-1, keepdim=True)  # [B, k, D]
    masked = sal[:, None, :, :].masked_fill(~adj[..., None], float("-inf"))  # [B, k, k, D]
    return 2 * mean + masked.amax(dim=2)  # [B, k, D]


def cluster_saliency(
    delta: torch.Tensor, labels: torch.Tensor, k: int, adj: torch.Tensor | None = None
) -> torch.Tensor:
    """|| max over cluster of (n_t - n_ref) ||, optionally smoothed over neighbours first.  -> [B, k]"""
    sal = cluster_max(delta, labels, k)  # [B, k, D]
    if adj is not None:
        sal = smooth_over_neighbours(sal, adj)
    return torch.linalg.vector_norm(sal, dim=-1)  # [B, k]
