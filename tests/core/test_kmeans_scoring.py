import pytest
import torch

from cat import core


def test_kmeans_is_seeded_and_in_range():
    x = core.cluster_features(torch.randn(2, 64, 8), (8, 8), 0.05)
    a = core.kmeans(x, 6, 10, seed=3)
    assert a.shape == (2, 64) and int(a.min()) >= 0 and int(a.max()) < 6
    assert torch.equal(a, core.kmeans(x, 6, 10, seed=3))


def test_kmeans_on_positions_gives_compact_regions():
    grid = (8, 8)
    x = core.cluster_features(torch.zeros(1, 64, 16), grid, 0.05)
    labels = core.kmeans(x, 4, 20, seed=0).view(8, 8)
    # Every cluster is one connected 4-neighbourhood region of the grid.
    for c in labels.unique().tolist():
        cells = {(i, j) for i in range(8) for j in range(8) if labels[i, j] == c}
        seen, todo = set(), [next(iter(cells))]
        while todo:
            i, j = todo.pop()
            if (i, j) in seen:
                continue
            seen.add((i, j))
            todo += [(a, b) for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)) if (a, b) in cells]
        assert seen == cells


def test_kmeans_rejects_more_clusters_than_tokens():
    with pytest.raises(ValueError, match="k=5"):
        core.kmeans(torch.zeros(1, 4, 2), 5, 3, 0)


def test_kmeans_runs_on_meta():
    labels = core.kmeans(torch.empty(2, 64, 8, device="meta"), 4, 3, 0)
    assert labels.shape == (2, 64) and labels.device.type == "meta"


def test_relative_noise_is_the_per_token_l2_norm():
    n = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])
    assert core.relative_noise(n, torch.zeros_like(n)).tolist() == [[5.0, pytest.approx(2 ** 0.5)]]


def test_positional_code_halves():
    code = core.positional_code(2, 4, 6, torch.zeros(1))
    assert code.shape == (8, 6)
    assert code[5].tolist() == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25]  # row 1 of 2, col 1 of 4


def test_cluster_max_and_saliency():
    delta = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]]])
    labels = torch.tensor([[0, 0, 1]])
    assert core.cluster_max(delta, labels, 3).tolist() == [[[3.0, 0.0], [-1.0, 5.0], [0.0, 0.0]]]
    sal = core.cluster_saliency(delta, labels, 3)
    assert sal.tolist() == [[3.0, pytest.approx(26 ** 0.5), 0.0]]


def test_adjacency_and_smoothing():
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])  # a 3x2 grid: rows (0 0) (1 1) (2 2)
    adj = core.cluster_adjacency(labels, (3, 2), 3)
    assert adj[0].tolist() == [[True, True, False], [True, True, True], [False, True, True]]
    sal = torch.tensor([[[1.0], [4.0], [7.0]]])
    smooth = core.smooth_over_neighbours(sal, adj)
    # cluster 0: 2 * mean(1, 4) + max(1, 4) = 9; cluster 1: 2 * 4 + 7 = 15; cluster 2: 2 * 5.5 + 7 = 18
    assert smooth.flatten().tolist() == [9.0, 15.0, 18.0]
