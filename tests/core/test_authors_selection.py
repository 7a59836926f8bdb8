"""The five selection rules that follow the authors' code (issue: 1024-token scenes), each against
the first version this project shipped (restorable with CATConfig.legacy)."""

import pytest
import torch

from cat import CATConfig, core
from cat.engine import GenerationState
from cat.methods.cat import begin_step, end_step, noise_channels


def _generation(config, grid, outputs, channels=(None, None)):
    state = GenerationState(num_steps=len(outputs), channels=channels)
    for out in outputs:
        begin_step(state, config, grid)
        end_step(state, config, out.clone())
    return state


def _outputs(steps, p, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p, n, d, generator=gen) for _ in range(steps)]


@pytest.mark.parametrize("legacy", [False, True])
def test_noise_is_scored_on_the_raw_output_before_output_caching(legacy):
    config = CATConfig(keep_ratio=0.25, warmup_steps=3, num_clusters=4,
                       legacy=("scored_after_caching",) if legacy else ())
    outs = _outputs(6, 1, 64, 8)
    state = _generation(config, (8, 8), outs)
    ref = outs[1]
    for step in (2, 3, 4, 5):  # step 2 clusters (no plan: raw and cached agree), 3.. are pruned
        raw_r = torch.linalg.vector_norm(outs[step] - ref, dim=-1)
        rec = state.records[step]
        if step == 2 or not legacy:
            torch.testing.assert_close(rec.noise_magnitude, raw_r)
        else:  # the first version scored the unselected tokens on their stale previous output
            kept = rec.active
            torch.testing.assert_close(rec.noise_magnitude[kept], raw_r[kept])
            assert not torch.allclose(rec.noise_magnitude[~kept], raw_r[~kept])


def _scene(seed=0, p=2, grid=(16, 16), k=8, d=8):
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    delta = torch.randn(p, n, d, generator=gen)
    labels = core.kmeans(core.cluster_features(delta, grid, 0.05), k, 20, seed)
    r = torch.linalg.vector_norm(delta, dim=-1)
    freq = torch.rand(p, n, generator=gen).round(decimals=1)
    saliency = core.cluster_saliency(delta, labels, k)
    return r, saliency, labels, freq


@pytest.mark.parametrize("seed", range(6))
def test_cluster_picks_never_exceed_the_cluster_share(seed):
    r, saliency, labels, freq = _scene(seed)
    budget = 77  # 0.3 of 256
    cluster_budget = round(0.25 * budget)
    per_rank = core.quota_per_rank(8, (3, 2, 1), round(0.05 * budget), r.device)
    capped = core.cluster_picks(r, saliency, labels, freq, cluster_budget, per_rank, cap=True)
    first_version = core.cluster_picks(r, saliency, labels, freq, cluster_budget, per_rank, cap=False)
    assert (capped.sum(1) <= cluster_budget).all()
    assert (capped.sum(1) == cluster_budget).all()  # enough clusters to fill the share
    assert (first_version.sum(1) > cluster_budget).any()  # the stale picks came on top
    # the capped picks are a prefix of the walk: the most salient cluster's noise picks are all in
    top = saliency.argmax(1)
    for b in range(r.shape[0]):
        mine = labels[b] == top[b]
        noisiest = torch.topk(torch.where(mine, r[b], -1.0), 3 * round(0.05 * budget)).indices
        assert capped[b, noisiest].all()


def test_first_selection_passes_a_small_clusters_shortfall_to_the_next_cluster():
    # cluster 0: 2 tokens, most salient; cluster 1: 10 tokens; cluster 2: 10 tokens, the noisiest overall
    labels = torch.tensor([[0] * 2 + [1] * 10 + [2] * 10])
    r = torch.cat([torch.full((2,), 0.5), torch.linspace(0.1, 0.2, 10), torch.linspace(0.8, 0.9, 10)])[None]
    saliency = torch.tensor([[9.0, 5.0, 1.0]])
    carried = core.select_first(r, saliency, labels, budget=6, cap=3)
    first_version = core.select_first(r, saliency, labels, budget=6, cap=3, carry=False)
    assert carried.tolist() == [[0, 1, 8, 9, 10, 11]]  # 2 from cluster 0, its shortfall + 3 from cluster 1
    assert (first_version >= 12).sum() == 1  # the shortfall went to the globally noisiest token


def test_first_selection_with_few_clusters_still_comes_from_clusters():
    # k=4 with a 10% cap per cluster used to leave 60% of K to global noise; now each cluster takes
    # up to K/4 of its own noisiest tokens
    r, saliency, labels, _ = _scene(1, p=1, k=4)
    budget = 77
    idx = core.select_first(r, saliency, labels, budget, cap=round(0.1 * budget))
    per_cluster = torch.bincount(labels[0, idx[0]], minlength=4)
    assert per_cluster.sum() == budget and (per_cluster <= -(-budget // 4)).all()
    for c in range(4):  # and each cluster's picks are its noisiest tokens
        mine = (labels[0] == c).nonzero().squeeze(1)
        best = mine[r[0, mine].argsort(descending=True)[: per_cluster[c]]]
        assert set(best.tolist()) == set(idx[0][labels[0, idx[0]] == c].tolist())


def test_learned_sigma_channels_do_not_enter_the_score():
    # 4 latent channels in, 8 out (epsilon + variance), patch 2: 4 pixels x 8 channels per token
    torch.manual_seed(0)
    out = torch.randn(2, 16, 32)
    eps = noise_channels(out, (4, 8))
    assert eps.shape == (2, 16, 16)
    torch.testing.assert_close(eps, out.view(2, 16, 4, 8)[..., :4].reshape(2, 16, 16))
    assert noise_channels(out, (4, 4)) is out and noise_channels(out, (None, None)) is out

    config = CATConfig(keep_ratio=0.25, warmup_steps=3, num_clusters=4)
    outs = _outputs(6, 1, 16, 32, seed=1)
    noisy_sigma = [o.clone() for o in outs]
    for o in noisy_sigma:
        o.view(1, 16, 4, 8)[..., 4:] += 10 * torch.randn(1, 16, 4, 4)
    a = _generation(config, (4, 4), outs, channels=(4, 8))
    b = _generation(config, (4, 4), noisy_sigma, channels=(4, 8))
    for ra, rb in zip(a.records, b.records):
        if ra.noise_magnitude is not None:
            torch.testing.assert_close(ra.noise_magnitude, rb.noise_magnitude)
            assert torch.equal(ra.active, rb.active) if ra.active is not None else True
    legacy = CATConfig(keep_ratio=0.25, warmup_steps=3, num_clusters=4, legacy=("all_output_channels",))
    c = _generation(legacy, (4, 4), noisy_sigma, channels=(4, 8))
    assert not torch.allclose(c.records[3].noise_magnitude, a.records[3].noise_magnitude)


def _blobs(seed, k=6, per=40, d=2):
    gen = torch.Generator().manual_seed(seed)
    lattice = torch.tensor([[i, j] for i in range(4) for j in range(4)], dtype=torch.float32) * 15
    centres = lattice[torch.randperm(16, generator=gen)[:k]] + torch.rand(k, d, generator=gen) * 3  # >= 12 apart
    x = centres.repeat_interleave(per, 0) + torch.randn(k * per, d, generator=gen)
    truth = torch.arange(k).repeat_interleave(per)
    perm = torch.randperm(k * per, generator=gen)
    return x[perm][None], truth[perm]


def _recovers(labels, truth):
    pairs = set(zip(labels.tolist(), truth.tolist()))
    return len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist()))


def test_kmeans_plus_plus_finds_separated_blobs_where_random_seeding_can_fail():
    plus = [_recovers(core.kmeans(*_blobs(s)[:1], 6, 300, s)[0], _blobs(s)[1]) for s in range(12)]
    rand = [_recovers(core.kmeans(*_blobs(s)[:1], 6, 300, s, init="random")[0], _blobs(s)[1]) for s in range(12)]
    assert all(plus)
    assert not all(rand)


def test_kmeans_stops_at_convergence_with_the_same_labels():
    x, _ = _blobs(3)
    assert torch.equal(core.kmeans(x, 6, 50, 0), core.kmeans(x, 6, 1000, 0))
    seeds = core.kmeans_plus_plus(x.float(), 6, torch.Generator().manual_seed(0))
    assert seeds.shape == (1, 6, 2)
    # seeds are data points, all distinct
    assert all((x[0] == c).all(-1).any() for c in seeds[0])
    assert len({tuple(c.tolist()) for c in seeds[0]}) == 6


def test_legacy_names_are_checked():
    with pytest.raises(ValueError, match="legacy"):
        CATConfig(legacy=("no_such_rule",))
    assert CATConfig(legacy=["random_kmeans_init"]).legacy == ("random_kmeans_init",)
