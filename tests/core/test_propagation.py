"""ClusCa's pure functions (`cat.core.propagation`): the authors' k-means, one representative per cluster, and
the propagation of the representatives' fresh outputs to their clusters, against hand computations."""

import torch

from cat.core.propagation import lloyd_l1, one_per_cluster, propagate_, random_centroids, rows


def blobs(b=2, per=10, d=4, seed=0):
    """Three well-separated blobs of `per` tokens each, shuffled per sample; returns (x, true cluster)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * d, [20.0] * d, [-20.0] * d])
    truth = torch.arange(3).repeat_interleave(per)
    xs, ts = [], []
    for _ in range(b):
        order = torch.randperm(3 * per, generator=g)
        xs.append(centres[truth[order]] + torch.randn(3 * per, d, generator=g))
        ts.append(truth[order])
    return torch.stack(xs), torch.stack(ts)


def test_lloyd_l1_recovers_separated_blobs_and_assigns_each_token_its_nearest_l1_centroid():
    x, truth = blobs()
    init = torch.stack([x[b, [int((truth[b] == c).nonzero()[0]) for c in range(3)]] for b in range(2)])
    labels, centroids = lloyd_l1(x, init, iters=10)
    assert torch.equal(labels, truth)  # the init's cluster c is blob c
    assert torch.equal(labels, torch.cdist(x, centroids, p=1).argmin(-1))
    for b in range(2):
        for c in range(3):
            assert torch.allclose(centroids[b, c], x[b][truth[b] == c].mean(0), atol=1e-5)


def test_lloyd_l1_warm_started_at_its_fixed_point_stays_and_an_empty_cluster_moves_to_zero():
    x, _ = blobs()
    labels, centroids = lloyd_l1(x, random_centroids(x, 3, torch.Generator().manual_seed(0)), iters=50)
    again, same = lloyd_l1(x, centroids, iters=1)
    assert torch.equal(again, labels) and torch.equal(same, centroids)
    far = torch.cat([centroids[:, :2], torch.full_like(centroids[:, :1], 1e4)], dim=1)  # no token near it
    _, moved = lloyd_l1(x, far, iters=1)
    assert torch.equal(moved[:, 2], torch.zeros_like(moved[:, 2]))


def test_random_centroids_are_seeded_tokens():
    x, _ = blobs()
    a = random_centroids(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_centroids(x, 4, torch.Generator().manual_seed(3)))
    assert all(any(torch.equal(a[b, j], t) for t in x[b]) for b in range(2) for j in range(4))


def test_lloyd_l1_runs_on_meta():
    x = torch.empty(2, 64, 8, device="meta")
    labels, centroids = lloyd_l1(x, random_centroids(x, 4, torch.Generator().manual_seed(0)), iters=3)
    assert labels.shape == (2, 64) and centroids.shape == (2, 4, 8) and labels.device.type == "meta"


def test_one_per_cluster_picks_the_member_with_the_largest_draw_per_layer():
    labels = torch.tensor([[0, 1, 0, 2, 1, 0], [2, 2, 1, 1, 0, 0]])
    uniforms = torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(0))  # [L, B, N]
    picks = one_per_cluster(labels, 3, uniforms)
    assert picks.shape == (3, 2, 3)
    for layer in range(3):
        for b in range(2):
            for c in range(3):
                members = (labels[b] == c).nonzero().flatten()
                assert picks[layer, b, c] == members[uniforms[layer, b, members].argmax()]
    assert torch.equal(labels.gather(1, picks[0]), torch.arange(3).expand(2, 3))  # one per cluster
    assert torch.equal(one_per_cluster(torch.zeros(1, 4, dtype=torch.long), 2, torch.rand(1, 4))[:, 1],
                       torch.zeros(1, dtype=torch.long))  # an empty cluster gets token 0


def test_propagate_by_hand():
    cache = torch.arange(12.0).view(1, 6, 2)  # [B, N, D]
    before = cache.clone()
    labels = torch.tensor([[0, 1, 0, 1, 1, 0]])
    index = torch.tensor([[2, 4]])  # representative of cluster 0, of cluster 1
    fresh = torch.tensor([[[100.0, 200.0], [300.0, 400.0]]])
    gamma = 0.25
    propagate_(cache, index, fresh, labels, gamma)
    expected = before.clone()
    expected[0, 2], expected[0, 4] = fresh[0, 0], fresh[0, 1]
    spread = torch.stack([fresh[0, int(c)] for c in labels[0]])[None]
    expected = spread * gamma + expected * (1 - gamma)
    assert torch.equal(cache, expected)
    assert torch.equal(cache[0, 2], fresh[0, 0]) and torch.equal(cache[0, 4], fresh[0, 1])  # the representatives


def test_propagate_with_gamma_0_writes_the_representatives_only_and_gamma_1_their_value_everywhere():
    g = torch.Generator().manual_seed(1)
    cache, fresh = torch.randn(2, 8, 3, generator=g), torch.randn(2, 2, 3, generator=g)
    labels = torch.tensor([[0, 0, 1, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0, 1, 0]])
    index = torch.tensor([[4, 2], [5, 6]])
    only = propagate_(cache.clone(), index, fresh, labels, 0.0)
    expected = cache.clone()
    for b in range(2):
        expected[b, index[b]] = fresh[b]
    assert torch.equal(only, expected)
    everywhere = propagate_(cache.clone(), index, fresh, labels, 1.0)
    assert torch.equal(everywhere, rows(fresh, labels))
