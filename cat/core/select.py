"""Budgeted token selection: every function returns exactly K distinct token indices per sample.

A plan is an index tensor [B, K] sorted ascending. Rankings are lexicographic stable sorts, so ties
break the same way on every device: by the next key, and finally by token index.
"""

from __future__ import annotations

import torch


def order_by(*keys: torch.Tensor) -> torch.Tensor:
    """Token permutation sorting by keys[0] ascending, then keys[1], ... then index.  [B, N] each -> [B, N]"""
    order = torch.argsort(keys[-1], dim=1, stable=True)  # the last key first: ties by index
    for key in reversed(keys[:-1]):
        order = then_by(order, key)
    return order


def then_by(order: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`order` re-sorted by `key` ascending, ties kept in `order`'s order: `then_by(order_by(*keys), k)` is
    `order_by(k, *keys)`.  [B, N] x2 -> [B, N]"""
    return order.gather(1, torch.argsort(key.gather(1, order), dim=1, stable=True))


def positions(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: where each token stands in `order`.  [B, N] -> [B, N]"""
    n = order.shape[1]
    ranks = torch.arange(n, device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ranks)


def rank_within_cluster(order: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Rank of each token among the tokens of its own cluster, in the given order.  -> [B, N]"""
    lab = labels.gather(1, order)  # [B, N] labels in rank order
    # one-hot rows by scatter (`one_hot` checks its input's range on the host)
    seen = torch.zeros(*lab.shape, k, dtype=torch.long, device=lab.device).scatter_(2, lab[..., None], 1).cumsum(dim=1)  # [B, N, k]
    rank_sorted = seen.gather(2, lab[..., None]).squeeze(-1) - 1  # [B, N]
    return torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)


def by_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """Cluster ids from the most salient down, ties by id.  [B, k] -> [B, k]"""
    return torch.argsort(saliency, dim=1, descending=True, stable=True)


def walk_clusters(saliency: torch.Tensor, per_rank: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quota of each cluster when walking clusters by saliency until `budget` tokens are assigned.

    `per_rank` [k] is the quota of the cluster at each saliency rank; the walk stops when the budget
    is used, so later clusters get a partial or zero quota.  [B, k] -> quota [B, k], rank [B, k]
    """
    b, k = saliency.shape
    by_rank = by_saliency(saliency)  # [B, k] cluster ids
    before = per_rank.cumsum(0) - per_rank  # [k] quota used by higher ranks
    capped = (budget - before).clamp(min=0).minimum(per_rank)  # [k]
    quota = torch.empty_like(by_rank).scatter_(1, by_rank, capped.expand(b, k))
    rank = torch.empty_like(by_rank).scatter_(1, by_rank, torch.arange(k, device=saliency.device).expand(b, k))
    return quota, rank


def quota_per_rank(k: int, units: tuple[int, ...], unit: int, device: torch.device) -> torch.Tensor:
    """Per-rank cluster quotas in tokens: units[i] * unit, the last entry repeating.  -> [k]"""
    return torch.tensor([units[min(i, len(units) - 1)] * unit for i in range(k)], device=device)


def take(priority: torch.Tensor, order: torch.Tensor, budget: int, position: torch.Tensor | None = None) -> torch.Tensor:
    """The `budget` tokens of lowest priority value, ties broken by position in `order` (`position`:
    `positions(order)`, when the caller has it).  -> [B, K]

    `priority` holds small non-negative integers, so (priority, position) is one integer key and one sort.
    """
    n = order.shape[1]
    position = positions(order) if position is None else position
    chosen = order_by(priority.long() * n + position)[:, :budget]  # [B, K]
    return chosen.sort(dim=1).values


def select_noise(r: torch.Tensor, budget: int) -> torch.Tensor:
    """The K tokens with the largest relative noise.  [B, N] -> [B, K]"""
    return order_by(-r)[:, :budget].sort(dim=1).values


def select_random(shape: tuple[int, int], budget: int, seed: int, device: torch.device) -> torch.Tensor:
    """K uniformly random distinct tokens per sample, drawn on `device` from a generator of that device
    seeded with `seed`, so nothing is copied from the host (a CUDA device draws other numbers than the
    CPU; the `meta` device has no generator).  -> [B, K]"""
    device = torch.device(device)
    gen = None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed)
    draws = torch.rand(shape, generator=gen, device=device)  # [B, N]
    return draws.argsort(dim=1)[:, :budget].sort(dim=1).values


def cluster_sizes(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Tokens per cluster.  [B, N] -> [B, k]"""
    return torch.zeros(labels.shape[0], k, device=labels.device, dtype=torch.long).scatter_add_(
        1, labels, torch.ones_like(labels))


def carry_quotas(saliency: torch.Tensor, sizes: torch.Tensor, cap: int, budget: int) -> torch.Tensor:
    """First-selection quotas: walking clusters by saliency, each takes up to `cap` tokens plus the
    shortfall of the clusters before it (a cluster smaller than its share passes the rest on), until
    `budget` tokens are assigned.  [B, k] x2 -> quota [B, k]
    """
    b, k = saliency.shape
    by_rank = by_saliency(saliency)  # [B, k] cluster ids
    size = sizes.gather(1, by_rank)  # [B, k] in rank order
    taken, used = [], torch.zeros(b, device=saliency.device, dtype=torch.long)
    for i in range(k):  # k is small (tens): a loop of tensor ops, no host synchronisation
        room = torch.minimum(cap * (i + 1) - used, budget - used).clamp(min=0)
        take_i = torch.minimum(size[:, i], room)
        taken.append(take_i)
        used = used + take_i
    return torch.empty_like(by_rank).scatter_(1, by_rank, torch.stack(taken, dim=1))


def select_first(
    r: torch.Tensor, saliency: torch.Tensor, labels: torch.Tensor, budget: int, cap: int, carry: bool = True
) -> torch.Tensor:
    """First selection: walk clusters by saliency, taking each one's noisiest tokens, until the budget
    is filled.  -> [B, K]

    With `carry` (the authors' walk) a cluster takes up to `cap` tokens plus the shortfall of the
    clusters before it, and `cap` is raised to ceil(K / k) when k clusters of `cap` could not fill K,
    so the whole budget comes from clusters; only a shortfall of the last clusters falls to the
    noisiest remaining tokens. Without it each cluster gets at most `cap` and every shortfall is
    filled by global noise (this project's first version).
    """
    k = saliency.shape[1]
    if carry:
        quota = carry_quotas(saliency, cluster_sizes(labels, k), max(cap, -(-budget // k)), budget)
    else:
        per_rank = torch.full((k,), cap, device=r.device, dtype=torch.long)
        quota, _ = walk_clusters(saliency, per_rank, budget)
    noisy = order_by(-r)
    picked = rank_within_cluster(noisy, labels, k) < quota.gather(1, labels)  # [B, N]
    return take((~picked).long(), noisy, budget)


def select_pruned(
    r: torch.Tensor,
    saliency: torch.Tensor,
    labels: torch.Tensor,
    freq: torch.Tensor,
    budget: int,
    cluster_budget: int,
    per_rank: torch.Tensor,
    use_staleness: bool = True,
    cap_clusters: bool = True,
) -> torch.Tensor:
    """Selection for a pruned step.  r, freq, labels [B, N]; saliency [B, k] -> [B, K]

    With staleness (the authors' rule): walking clusters by saliency, each contributes its noisiest
    tokens (its quota: `per_rank` of its rank, at most its size) and, for ranks >= 1, half that many
    of its stalest tokens; the walk's picks are cut to `cluster_budget` in walk order (rank, then
    noise picks before stale picks); then the `budget - cluster_budget` stalest tokens overall join;
    the union is filled to exactly K by staleness. `cap_clusters=False` restores this project's
    first version (quotas cut by the budget before adding the stale picks, so the cluster picks could
    exceed `cluster_budget`). Without staleness: the whole budget from the cluster walk, filled by noise.
    """
    noisy = order_by(-r)
    if not use_staleness:
        quota, _ = walk_clusters(saliency, per_rank, cluster_budget)
        picked = rank_within_cluster(noisy, labels, saliency.shape[1]) < quota.gather(1, labels)
        return take((~picked).long(), noisy, budget)
    stale = then_by(noisy, freq)  # order_by(freq, -r): least recently refreshed first, noisiest among equals
    picked = cluster_picks(r, saliency, labels, freq, cluster_budget, per_rank, cap=cap_clusters,
                           orders=(noisy, stale))
    position = positions(stale)
    stalest = position < budget - cluster_budget  # [B, N]
    priority = (~picked) * (2 - stalest.long())  # [B, N] 0: picked, 1: among the stalest, 2: the rest
    return take(priority, stale, budget, position)


def cluster_picks(
    r: torch.Tensor, saliency: torch.Tensor, labels: torch.Tensor, freq: torch.Tensor,
    cluster_budget: int, per_rank: torch.Tensor, cap: bool = True,
    orders: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The cluster part of a pruned-step selection, as a mask.  -> [B, N] bool

    Walking clusters by saliency, each contributes its `quota` noisiest tokens (`per_rank` of its
    rank, at most its size) and, for ranks >= 1, its quota // 2 stalest tokens. With `cap` (the
    authors' rule) the picks are cut to `cluster_budget` in walk order (rank, then noise picks by
    noise, then stale picks by staleness). Without it (this project's first version) the noise quotas
    are cut by the budget and the stale picks come on top, so the part can exceed `cluster_budget`.
    """
    k = saliency.shape[1]
    if orders is None:
        noisy = order_by(-r)
        orders = noisy, then_by(noisy, freq)
    noisy, stale = orders  # as the caller sorted them
    noise_rank = rank_within_cluster(noisy, labels, k)  # [B, N]
    stale_rank = rank_within_cluster(stale, labels, k)
    if not cap:
        quota, rank = walk_clusters(saliency, per_rank, cluster_budget)
    else:
        rank = positions(by_saliency(saliency))  # [B, k]
        quota = torch.minimum(per_rank.gather(0, rank.flatten()).view_as(rank), cluster_sizes(labels, k))
    noise_pick = noise_rank < quota.gather(1, labels)
    stale_quota = (quota // 2) * (rank >= 1)  # [B, k]
    stale_pick = stale_rank < stale_quota.gather(1, labels)
    picked = noise_pick | stale_pick
    if not cap:
        return picked
    n = r.shape[1]
    within = torch.where(noise_pick, noise_rank, n + stale_rank)  # noise picks first, then stale ones: [0, 2N)
    # walk order (picked first, then cluster rank, then `within`) as one integer key: one sort, not three
    walk = order_by(((~picked) * k + rank.gather(1, labels)) * (2 * n) + within)  # [B, N]
    return picked & (positions(walk) < cluster_budget)


def update_staleness(freq: torch.Tensor, active: torch.Tensor, decay: float) -> torch.Tensor:
    """f <- decay * f + 1[selected].  [B, N] float, [B, K] indices or their [B, N] bool mask -> [B, N]"""
    hit = active if active.dtype == torch.bool else mask_of(active, freq.shape[1])
    return decay * freq + hit


def mask_of(active: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Boolean mask of the selected tokens.  [B, K] -> [B, N]"""
    mask = torch.zeros(active.shape[0], num_tokens, device=active.device, dtype=torch.bool)
    return mask.scatter_(1, active, True)
