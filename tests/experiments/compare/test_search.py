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
