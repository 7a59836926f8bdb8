"""Setting a knob to a compute target and choosing the tuned setting, on synthetic reductions."""

import pytest

from experiments.compare.search import Found, best, bisect_knob, bracket_knob


def test_bisection_finds_a_continuous_knob_at_the_target_either_way_round():
    keep = lambda ratio: 0.7 * (1 - ratio)  # noqa: E731  a keep ratio: more kept, less saved
    found = bisect_knob(keep, 0.01, 1.0, 0.5, tol=1e-3)
    assert found.reduction == pytest.approx(0.5, abs=1e-3) and found.value == pytest.approx(1 - 0.5 / 0.7, abs=3e-3)
    threshold = lambda t: min(0.9, t * 2)  # noqa: E731  a cache threshold: higher, more skipped
    assert bisect_knob(threshold, 0.0, 1.0, 0.4, tol=1e-3).value == pytest.approx(0.2, abs=1e-3)
    assert bisect_knob(keep, 0.01, 1.0, 0.8) is None  # the method cannot save 80%
    calls = []
    bisect_knob(lambda v: calls.append(v) or keep(v), 0.01, 1.0, 0.5, tol=1e-3, max_iter=6)
    assert len(calls) <= 8


def test_a_discrete_knob_is_bracketed_never_interpolated():
    intervals = {2: 0.45, 3: 0.62, 4: 0.70}
    assert bracket_knob(intervals, 0.5) == (Found(2, 0.45), Found(3, 0.62))
    assert bracket_knob(intervals, 0.621) == (Found(3, 0.62),)
    assert bracket_knob(intervals, 0.3) is None and bracket_knob(intervals, 0.75) is None


def test_the_tuned_setting_is_the_best_calibration_score_among_those_reaching_the_target():
    scores = {"order=1": 33.0, "order=2": 31.0, "order=3": None}
    assert best(list(scores), scores.get) == "order=1"
    assert best(["a", "b"], lambda c: 30.0) == "a"  # a tie keeps the simpler, earlier setting
    assert best(["order=3"], scores.get) is None


def test_a_search_starts_from_what_earlier_targets_measured_and_stops_at_a_tight_bracket():
    """Five targets of one setting with a stepwise reduction (a threshold's: whole steps skipped): the points
    measured for one target bracket the next, and a search stops once two measured values bracket the target
    within `span` (the two settings matched compute mixes), where a search from scratch bisects a gap that no
    value can close."""
    from experiments.compare.search import bracket_knob, find_knob

    def threshold(t):  # 40 plateaus, each 0.0375 of reduction above the last
        return min(0.9, (t * 40) // 1 / 40 * 1.5)

    fresh, warm, known = [], [], {}
    for target in (0.3, 0.4, 0.5, 0.6, 0.7):
        a = find_knob(lambda v: fresh.append(v) or threshold(v), 0.0, 1.0, target, tol=0.005)
        assert find_knob(lambda v: warm.append(v) or threshold(v), 0.0, 1.0, target, tol=0.005, known=known,
                         span=0.05) is not None
        pair = bracket_knob(known, target, 0.005)
        assert abs(a.reduction - target) <= 0.0375
        assert len(pair) == 1 and abs(pair[0].reduction - target) <= 0.005 or \
            pair[0].reduction < target < pair[1].reduction and pair[1].reduction - pair[0].reduction <= 0.05
    assert len(warm) <= len(set(fresh)) / 2  # (fresh: its repeated end points are read, not run, by the bench)
    assert set(known) == set(warm) and len(set(warm)) == len(warm)  # every value measured once
    calls, measured = [], sorted(known.values())[len(known) // 2]
    again = find_knob(lambda v: calls.append(v) or threshold(v), 0.0, 1.0, measured, tol=0.005, known=dict(known))
    assert calls == [] and again.reduction == measured  # a reduction measured before: no run


def test_the_warmup_bounds_the_reduction_a_setting_can_reach():
    import cat
    from experiments.compare.search import warmup_bound

    assert warmup_bound(cat.FORAConfig(warmup_steps=10), 28) == pytest.approx(1 - 10 / 28)
    assert warmup_bound(cat.CATConfig(warmup_steps=8), 28) == pytest.approx(20 / 28)
    assert warmup_bound(cat.StepsConfig(), 28) == 1.0  # no warm-up
    assert warmup_bound(cat.MagCacheConfig(mag_ratios=(1.0,) * 28), 28) == 1.0  # its warm-up from a share: no bound
