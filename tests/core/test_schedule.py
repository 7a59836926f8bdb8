"""The budgeted forecasting cache's pure parts: the schedule search (`cat.core.schedule`: exact against brute
force, within its MACs limit, warm-up and longest skip respected), the evenly spaced schedule, the
calibration passes (every segment measured once), the cluster correction (`cat.core.propagation.correct`)
and the in-place factor refresh (`cat.core.forecast.refresh_factors_`) against hand computations."""

import itertools
import random

import pytest
import torch

from cat.core import forecast as fc
from cat.core import schedule as sc
from cat.core.propagation import correct, nearest_members

MACS = {"F": 1.0, "f": 0.02, "c": 0.07}


def random_costs(num_steps, max_skip, seed, kinds=("f", "c")):
    rng = random.Random(seed)
    return {k: [[rng.uniform(0.1, 1.0) * skipped ** 2 * (1 + (k == "f")) if s + skipped < num_steps else None
                 for skipped in range(1, max_skip + 1)] for s in range(num_steps)] for k in kinds}


def brute_force(costs, macs, num_steps, limit, warmup, max_skip):
    """Every schedule of F, f, c: the least total segment cost within the limit (segments of one kind)."""
    best = None
    for tail in itertools.product("Ffc" if "c" in costs else "Ff", repeat=num_steps - warmup):
        actions = "F" * warmup + "".join(tail)
        if sc.schedule_macs(actions, macs) > limit:
            continue
        runs = [len(r) for r in actions.replace("F", " ").split()]
        if any(r > max_skip for r in runs):
            continue
        segs = sc.segments(actions)
        if sum(length for _, length, _ in segs) != actions.count("f") + actions.count("c"):
            continue  # a run mixing forecast and corrected steps has no measured cost
        cost = sum(costs[k][i][length - 1] for i, length, k in segs)
        if best is None or cost < best[1] - 1e-12:
            best = (actions, cost)
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kinds", [("f",), ("f", "c")])
def test_the_search_is_exact_within_its_limit(seed, kinds):
    num_steps, max_skip, warmup = 8, 3, 1 + seed % 2
    costs = random_costs(num_steps, max_skip, seed, kinds)
    for share in (0.35, 0.5, 0.7):
        limit = share * num_steps * MACS["F"]
        found = sc.search_schedule(costs, MACS, num_steps, limit, warmup, max_skip)
        expected = brute_force(costs, MACS, num_steps, limit, warmup, max_skip)
        assert (found is None) == (expected is None)
        if found is None:
            continue
        actions, cost = found
        assert cost == pytest.approx(expected[1], rel=1e-12)
        assert sc.schedule_macs(actions, MACS) <= limit + 1e-12
        assert actions[:warmup] == "F" * warmup
        assert max(len(r) for r in actions.replace("F", " ").split() or [""]) <= max_skip


def test_the_search_trades_a_full_step_for_corrected_steps_when_that_is_cheaper_in_error():
    num_steps = 6
    costs = {"f": [[1.0, 4.0, 9.0] for _ in range(num_steps)], "c": [[0.1, 0.4, 0.9] for _ in range(num_steps)]}
    actions, cost = sc.search_schedule(costs, MACS, num_steps, 2.5, warmup=1, max_skip=3)
    assert actions.count("F") == 2 and "f" not in actions and cost == pytest.approx(0.4 + 0.4)


def test_a_limit_below_the_warmup_finds_nothing_and_a_large_one_keeps_every_step_full():
    costs = random_costs(6, 2, 0)
    assert sc.search_schedule(costs, MACS, 6, 2.9, warmup=3, max_skip=2) is None
    assert sc.search_schedule(costs, MACS, 6, 6.0, warmup=1, max_skip=2) == ("FFFFFF", 0.0)


def test_even_schedules_space_full_steps_evenly_after_the_warmup():
    assert sc.even_schedule(10, 1, 4, "c") == "FcFccFccFc"  # the end counts as the next full step
    assert sc.even_schedule(10, 2, 4, "f") == "FFffFffFff"
    assert sc.even_schedule(5, 2, 2, "f") == "FFfff"
    tokens = {"F": 256, "f": 0, "c": 4}
    assert sc.even_within(10, 1, "c", tokens, 0.5 * 10 * 256) == "FcFccFccFc"  # 4 full steps fit, 5 do not
    assert sc.even_within(10, 5, "c", tokens, 0.5 * 10 * 256) == "FFFFFccccc"  # the warm-up alone is over


@pytest.mark.parametrize("num_steps, max_skip", [(10, 3), (28, 6)])
def test_the_calibration_passes_measure_every_segment_exactly_once(num_steps, max_skip):
    seen = []
    for gap in range(2, max_skip + 2):
        for offset in range(gap):
            actions = sc.regular_schedule(num_steps, gap, offset, "f")
            seen += [(i, skipped) for i, skipped, kind in sc.segments(actions) if skipped == gap - 1 and kind == "f"]
    expected = [(i, skipped) for i in range(num_steps) for skipped in range(1, max_skip + 1) if i + skipped < num_steps]
    assert sorted(seen) == sorted(expected)


def test_segments_and_actions_are_checked():
    assert sc.segments("FffFcFfcF") == [(0, 2, "f"), (3, 1, "c")]  # a mixed run has no segment
    for bad in ("fFF", "FxF", ""):
        with pytest.raises(ValueError, match="a schedule is one of F, f, c per step"):
            sc.check_actions(bad)
    with pytest.raises(ValueError, match="has 3 steps, the run 4"):
        sc.check_actions("FFf", 4)


def test_costs_read_at_another_step_count_take_the_nearest_step():
    costs = [[float(s), None] for s in range(5)]
    assert sc.resample_costs(costs, 5) == costs
    assert [row[0] for row in sc.resample_costs(costs, 9)] == [0, 0, 1, 2, 2, 2, 3, 4, 4]  # half-way rounds to even


def test_the_correction_replaces_computed_rows_and_spreads_each_clusters_mean_error():
    g = torch.Generator().manual_seed(0)
    forecast = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [1, 1, 1, 0, 0, 2]])
    index = torch.tensor([[1, 2], [0, 1]])  # sample 1: two tokens of cluster 1, none of 0 or 2
    fresh = torch.randn(2, 2, 3, generator=g, dtype=torch.float64)
    out = correct(forecast, index, fresh, labels, 3, 0.5)
    want = forecast.clone()
    e = fresh - torch.stack([forecast[b, index[b]] for b in range(2)])  # [2, 2, 3]
    want[0, [0, 1]] += 0.5 * e[0, 0]
    want[0, [2, 3]] += 0.5 * e[0, 1]
    want[1, [0, 1, 2]] += 0.5 * (e[1, 0] + e[1, 1]) / 2
    for b in range(2):
        want[b, index[b]] = fresh[b]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    only_rows = correct(forecast, index, fresh, labels, 3, 0.0)
    assert torch.equal(only_rows[0, [0, 3, 4, 5]], forecast[0, [0, 3, 4, 5]])
    assert torch.equal(only_rows[0, [1, 2]], fresh[0])


def test_nearest_members_are_each_clusters_token_nearest_its_centroid():
    x = torch.tensor([[[0.0], [1.0], [3.0], [10.0], [12.0]]])
    labels = torch.tensor([[0, 0, 0, 1, 1]])
    centroids = torch.tensor([[[1.2], [11.9]]])
    assert nearest_members(x, labels, centroids).tolist() == [[1, 4]]


@pytest.mark.parametrize("max_order", [0, 1, 2, 3])
def test_the_in_place_refresh_follows_the_authors_recursion(max_order):
    g = torch.Generator().manual_seed(1)
    ys = [torch.randn(2, 4, 3, generator=g, dtype=torch.float64) for _ in range(4)]
    steps = [0, 1, 4, 6]
    factors = [torch.zeros_like(ys[0]) for _ in range(max_order + 1)]
    storage = [f.data_ptr() for f in factors]
    known, last = 0, None
    for y, step in zip(ys, steps):
        valid = torch.tensor([1.0 if i < known else 0.0 for i in range(max_order + 1)], dtype=torch.float64)
        inv = torch.tensor(0.0 if last is None else 1.0 / (step - last), dtype=torch.float64)
        fc.refresh_factors_(factors, y, inv, valid)
        known, last = min(known + 1, max_order + 1), step
    want = fc.difference_factors(ys, steps, max_order)
    for got, expected in zip(factors, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert [f.data_ptr() for f in factors] == storage  # updated in place
    w = fc.weights(3, max_order, "hermite", 0.5)
    torch.testing.assert_close(fc.weigh_by(factors, torch.tensor(w, dtype=torch.float64)), fc.weigh(want, w),
                               rtol=0, atol=1e-12)
