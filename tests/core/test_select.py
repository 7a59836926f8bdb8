"""Selection properties of the pure core and of every policy of the timeline."""

import pytest
import torch

from cat import CATConfig, core
from cat.engine import GenerationState
from cat.methods.cat import begin_step, end_step, select

GRIDS = [(4, 4), (8, 8), (6, 10), (16, 16)]


def _random_case(grid, p=3, d=8, seed=0, k=4):
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    r = torch.rand(p, n, generator=gen)
    delta = torch.randn(p, n, d, generator=gen)
    labels = core.kmeans(core.cluster_features(delta, grid, 0.05), k, 5, seed)
    freq = torch.rand(p, n, generator=gen).round(decimals=1)  # many ties
    return r, delta, labels, freq


def _assert_plan(idx, p, n, budget):
    assert idx.shape == (p, budget)
    assert idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    for row in idx:
        assert len(set(row.tolist())) == budget
    assert torch.equal(idx, idx.sort(dim=1).values)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("policy", ["cat", "no_cluster", "no_staleness", "noise_only", "random"])
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("keep_ratio", [0.05, 0.3, 0.9])
def test_exactly_k_unique_in_range(grid, policy, first, keep_ratio):
    r, delta, labels, freq = _random_case(grid)
    n = r.shape[1]
    config = CATConfig(keep_ratio=keep_ratio, num_clusters=4, policy=policy)
    state = GenerationState(grid=grid, labels=labels, freq=freq, step=9)
    idx = select(config, state, r, delta, first=first)
    _assert_plan(idx, r.shape[0], n, config.num_kept(n))
    again = select(config, state, r.clone(), delta.clone(), first=first)
    assert torch.equal(idx, again)


def test_noise_only_takes_the_noisiest():
    r = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]])
    assert core.select_noise(r, 2).tolist() == [[1, 3]]


def test_random_policy_is_seeded():
    a = core.select_random((2, 50), 10, seed=1, device=torch.device("cpu"))
    b = core.select_random((2, 50), 10, seed=1, device=torch.device("cpu"))
    c = core.select_random((2, 50), 10, seed=2, device=torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_first_selection_walks_clusters_with_a_cap():
    # Two clusters; cluster 1 is far more salient. A cap of 3 per cluster and a budget of 5:
    # the 3 noisiest of cluster 1, then the 2 noisiest of cluster 0.
    labels = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    r = torch.tensor([[0.1, 0.4, 0.3, 0.2, 0.9, 0.8, 0.7, 0.6]])
    saliency = torch.tensor([[1.0, 5.0]])
    idx = core.select_first(r, saliency, labels, budget=5, cap=3)
    assert idx.tolist() == [[1, 2, 4, 5, 6]]


def test_walk_clusters_stops_at_the_budget():
    saliency = torch.tensor([[0.2, 0.9, 0.5]])
    quota, rank = core.walk_clusters(saliency, torch.tensor([3, 2, 1]), budget=4)
    assert rank.tolist() == [[2, 0, 1]]
    assert quota.tolist() == [[0, 3, 1]]


def test_pruned_selection_without_cluster_share_takes_the_stalest():
    freq = torch.tensor([[1.5, 0.0, 0.75, 0.25, 1.0, 0.5]])
    r = torch.rand(1, 6)
    labels = torch.zeros(1, 6, dtype=torch.long)
    idx = core.select_pruned(r, torch.zeros(1, 1), labels, freq, budget=3, cluster_budget=0,
                             per_rank=torch.tensor([0]))
    assert idx.tolist() == [[1, 3, 5]]


def test_no_staleness_ignores_staleness():
    r, delta, labels, freq = _random_case((8, 8))
    config = CATConfig(num_clusters=4, policy="no_staleness")
    a = select(config, GenerationState(grid=(8, 8), labels=labels, freq=freq, step=9), r, delta, first=False)
    b = select(config, GenerationState(grid=(8, 8), labels=labels, freq=torch.rand_like(freq), step=9), r, delta,
               first=False)
    assert torch.equal(a, b)


def test_cat_uses_staleness_and_clusters():
    r, delta, labels, freq = _random_case((8, 8))
    config = CATConfig(num_clusters=4)
    state = GenerationState(grid=(8, 8), labels=labels, freq=freq, step=9)
    base = select(config, state, r, delta, first=False)
    other_freq = select(config, GenerationState(grid=(8, 8), labels=labels, freq=1 - freq, step=9), r, delta, first=False)
    assert not torch.equal(base, other_freq)


def _run_timeline(config, grid, steps, p=2, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = GenerationState(num_steps=steps)
    n = grid[0] * grid[1]
    for _ in range(steps):
        begin_step(state, config, grid)
        end_step(state, config, torch.randn(p, n, d, generator=gen))
    return state


@pytest.mark.parametrize("keep_ratio", [0.1, 0.3, 0.5])
def test_every_token_is_refreshed_within_a_bounded_number_of_steps(keep_ratio):
    grid = (16, 16)
    n = 256
    config = CATConfig(keep_ratio=keep_ratio, warmup_steps=3, num_clusters=8)
    state = _run_timeline(config, grid, steps=40)
    masks = torch.stack([r.active for r in state.records if r.phase == "pruned"])  # [S, P, N]
    budget = config.num_kept(n)
    stale_per_step = budget - round(config.cluster_share * budget)
    bound = -(-n // stale_per_step) + 1
    for start in range(masks.shape[0] - bound + 1):
        assert masks[start:start + bound].any(dim=0).all(), f"a token went {bound} steps without refresh"


def test_staleness_is_the_decayed_selection_count():
    freq = torch.zeros(1, 4)
    freq = core.update_staleness(freq, torch.tensor([[0, 1]]), 0.5)
    freq = core.update_staleness(freq, torch.tensor([[1, 2]]), 0.5)
    assert freq.tolist() == [[0.5, 1.5, 1.0, 0.0]]


def test_timeline_phases_and_token_counts():
    config = CATConfig(keep_ratio=0.25, warmup_steps=4, num_clusters=4)
    state = _run_timeline(config, (8, 8), steps=7)
    assert [r.phase for r in state.records] == ["full", "full", "reference", "cluster", "pruned", "pruned", "pruned"]
    assert [r.num_recomputed for r in state.records] == [64, 64, 64, 64, 16, 16, 16]
    for rec in state.records[4:]:
        assert rec.active.sum(dim=1).tolist() == [16, 16]


def test_keep_ratio_one_never_prunes():
    config = CATConfig(keep_ratio=1.0, warmup_steps=2, num_clusters=4)
    state = _run_timeline(config, (8, 8), steps=5)
    assert all(r.phase != "pruned" or r.active is None for r in state.records)
    assert [r.num_recomputed for r in state.records] == [64] * 5
    assert state.caches == {}
