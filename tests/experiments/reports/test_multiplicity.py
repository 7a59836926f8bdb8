"""Many paired tests in one report: the bootstrap p-value of a paired difference and Holm's step-down, against
hand-computed values, and the comparison report's Holm-adjusted verdicts on a synthetic sweep."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments.base.intervals import bootstrap_p, holm
from experiments.compare.matched import AtTarget, Cell, compare, interval, resamples
from experiments.reports.targets import ALPHA, holm_verdict, load_cells, markdown, reach, report, write_report


def test_the_bootstrap_p_value_counts_both_sides_of_zero_with_the_plus_one_correction():
    # 100 resamples: 10 below 0, 1 at 0, 89 above. Below or at 0: (1 + 11) / 101; at or above: (1 + 90) / 101.
    d = np.array([-1.0] * 10 + [0.0] + [1.0] * 89)
    assert bootstrap_p(d) == pytest.approx(2 * 12 / 101)
    assert bootstrap_p(np.ones(100)) == pytest.approx(2 / 101)  # never 0
    assert bootstrap_p(-np.ones(100)) == pytest.approx(2 / 101)
    assert bootstrap_p(np.zeros(100)) == 1.0  # capped at 1
    assert bootstrap_p(np.r_[-np.ones(50), np.ones(50)]) == 1.0


def test_a_p_value_below_0_05_means_the_95_percent_interval_of_the_same_resamples_excludes_0():
    rng = np.random.default_rng(0)
    for shift in np.linspace(0, 0.8, 41):
        d = rng.normal(shift, 0.3, 2000)
        lo, hi = interval(d, 0.95)
        if bootstrap_p(d) <= 0.05:
            assert lo > 0 or hi < 0, shift


@pytest.mark.parametrize("p, adjusted, rejected", [
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02], [True, False, False, True]),
    # the step-down stops at the first acceptance: 0.04 alone would pass, but 0.02 x 3 = 0.06 came first
    ([0.001, 0.03, 0.02, 0.04], [0.004, 0.06, 0.06, 0.06], [True, False, False, False]),
    # Holm rejects three where Bonferroni (4 p) would reject one: 0.04, 0.045, 0.04 -> 0.045, 0.5
    ([0.01, 0.015, 0.02, 0.5], [0.04, 0.045, 0.045, 0.5], [True, True, True, False]),
    # NaN is no test: m = 2
    ([np.nan, 0.01, 0.04], [np.nan, 0.02, 0.04], [False, True, True]),
    ([0.3, 0.6], [0.6, 0.6], [False, False]),  # capped at 1 only where needed, and monotone
])
def test_holm_adjusts_and_rejects_as_computed_by_hand(p, adjusted, rejected):
    adj, rej = holm(p, 0.05)
    assert np.allclose(adj, adjusted, equal_nan=True)
    assert rej.tolist() == rejected


def test_holm_agrees_with_the_textbook_step_down_on_random_families():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = rng.uniform(0, 0.08, rng.integers(1, 30))
        order = np.argsort(p, kind="stable")
        expected = np.zeros(p.size, bool)
        for i, j in enumerate(order):  # reject the i-th smallest while p <= alpha / (m - i), then stop
            if p[j] > 0.05 / (p.size - i):
                break
            expected[j] = True
        assert holm(p, 0.05)[1].tolist() == expected.tolist()


def test_a_holm_verdict_keeps_a_direction_only_where_the_adjusted_test_rejects():
    assert holm_verdict("better", True) == "better" and holm_verdict("worse", True) == "worse"
    assert holm_verdict("better", False) == "undetermined" and holm_verdict("worse", False) == "undetermined"
    assert holm_verdict("equivalent", False) == "equivalent"  # equivalence is not adjusted
    assert holm_verdict("undetermined", False) == "undetermined"
    # raw better (95% interval above 0) and the 90% interval inside the margin: equivalent once Holm does not reject
    assert holm_verdict("better", False, within_margin=True) == "equivalent"
    assert holm_verdict("better", True, within_margin=True) == "better"


def test_a_plan_that_mixed_in_a_setting_that_saves_nothing_is_not_reached_by_the_report(tmp_path):
    """A plan made before the rule (a cell keeping every token, 0% fewer MACs, its PSNR the ceiling on every prompt,
    mixed with one at 55%): the report does not mix them, and without a saving cell below the target the method
    does not reach it; with one (b), it mixes the two saving cells."""
    ceiling = 89.03
    folder = tmp_path / "m"
    (folder / "cells").mkdir(parents=True)
    rows = {"none": (0.0, ceiling), "far": (0.551, 24.6), "near": (0.30, 30.0)}
    for key, (red, value) in rows.items():
        (folder / "cells" / f"{key}.json").write_text(json.dumps(
            {"key": key, "indices": list(range(P)), "reduction": [red] * P, "psnr": [value] * P}))
    plan = {"method": "m", "variant": "tuned", "cells": ["none", "far"],
            "targets": {"0.4": {"cells": ["none", "far"], "labels": ["keep_ratio=1", "keep_ratio=0.99"]}}}
    (folder / "compare.json").write_text(json.dumps(plan))
    (entry,) = load_cells(tmp_path)
    assert reach(entry, 0.4) is None  # not 27% x 89 + 73% x 24.6 = 42.3 dB
    plan["cells"] += ["near"]
    (folder / "compare.json").write_text(json.dumps(plan))
    (entry,) = load_cells(tmp_path)
    mixed = reach(entry, 0.4)
    assert [c.setting for c in mixed.cells] == ["near", "keep_ratio=0.99"] and mixed.reduction == pytest.approx(0.4)


P = 32


def _cell(folder, method, values, full=None):
    """A compare cell of the tuned variant at target 0.5 (one setting), as experiments.tasks.compare writes it."""
    (folder / "cells").mkdir(parents=True)
    row = {"key": "k", "indices": list(range(P)), "reduction": [0.5] * P,
           **{name: list(map(float, v)) for name, v in values.items()}}
    (folder / "cells" / "k.json").write_text(json.dumps(row))
    (folder / "compare.json").write_text(json.dumps({"method": method, "variant": "tuned", "cells": ["k"],
                                                     "targets": {"0.5": {"cells": ["k"], "labels": [method]}}}))
    if full is not None:
        (folder / "cells" / "full.json").write_text(json.dumps({"indices": list(range(P)), **full}))
    (folder / "config.yaml").write_text("model: {name: toy, steps: 28}\n")


def test_the_report_adjusts_every_psnr_verdict_of_one_model_together(tmp_path):
    """Twelve methods barely above CAT (raw p about 0.01), one far above, one equivalent: under Holm over the 15
    tests (14 against CAT, the leader against its runner-up) only the clear ones keep a direction."""
    rng = np.random.default_rng(2)
    base = rng.normal(35, 3, P)
    _cell(tmp_path / "cat", "cat", {"psnr": base})
    _cell(tmp_path / "big", "big", {"psnr": base + 3 + rng.normal(0, 0.5, P)})
    _cell(tmp_path / "same", "same", {"psnr": base + rng.normal(0, 0.1, P)})
    for i in range(12):
        noise = rng.normal(0, 1, P)
        _cell(tmp_path / f"m{i}", f"m{i}", {"psnr": base + (noise - noise.mean()) + 0.45})  # d = 0.45, se ~ 0.18
    frame, leaders = report(load_cells(tmp_path), [0.5], "cat")
    frame = frame.set_index("method")
    tested = frame.p.notna()
    assert tested.sum() == 14 and leaders.p.notna().sum() == 1
    adjusted, _ = holm(np.r_[frame.p[tested], leaders.p], ALPHA)
    assert np.allclose(frame.p_holm[tested], adjusted[:14]) and leaders.p_holm.iloc[0] == pytest.approx(adjusted[14])
    small = frame.loc[[f"m{i}" for i in range(12)]]
    assert (small.verdict == "better").sum() >= 10  # raw: most are better
    assert (small.verdict_holm == "undetermined").sum() >= 10  # Holm: most are not
    assert frame.loc["big", "verdict"] == frame.loc["big", "verdict_holm"] == "better"
    assert frame.loc["same", "verdict"] == frame.loc["same", "verdict_holm"] == "equivalent"  # not adjusted
    for method, row in frame[tested].iterrows():  # Holm only ever takes a direction away
        assert row.verdict_holm in (row.verdict, "undetermined"), method
    assert np.isnan(frame.loc["cat", "p"])  # the reference is not tested against itself


def test_the_leader_is_paired_with_the_runner_up_and_disagreements_with_adherence_are_named(tmp_path):
    rng = np.random.default_rng(3)
    base, adherence = rng.normal(35, 3, P), rng.uniform(0.5, 1.0, P)
    full = {"adherence": list(adherence)}
    _cell(tmp_path / "cat", "cat", {"psnr": base, "adherence": adherence - 0.01}, full)
    # a: best by PSNR, 1 dB above b on every prompt, but its adherence 0.05 below CAT's and the full model's
    _cell(tmp_path / "a", "a", {"psnr": base + 4 + rng.normal(0, 0.1, P), "adherence": adherence - 0.06}, full)
    _cell(tmp_path / "b", "b", {"psnr": base + 3 + rng.normal(0, 0.1, P), "adherence": adherence}, full)
    frame, leaders = report(load_cells(tmp_path), [0.5], "cat")
    (row,) = leaders.itertuples()
    assert (row.leader, row.runner_up, row.target, row.variant) == ("a", "b", 0.5, "tuned")
    assert row.margin == pytest.approx(1.0, abs=0.1) and row.margin_lo <= row.margin <= row.margin_hi
    by = frame.set_index("method")
    assert row.margin == pytest.approx(by.loc["a", "psnr"] - by.loc["b", "psnr"])  # paired on the same prompts
    assert row.verdict == row.verdict_holm == "better"
    assert row.disagree == "a (adherence vs cat, adherence vs full model)"
    # adherence against the full model: the full model's own mean and interval, and every method's paired difference
    assert by.loc["cat", "adherence_full"] == pytest.approx(adherence.mean())
    assert by.loc["a", "adherence_d_full"] == pytest.approx(-0.06)
    assert by.loc["a", "adherence_full_verdict"] == "worse" and by.loc["b", "adherence_full_verdict"] == "equivalent"
    assert by.loc["a", "adherence_full_lo"] <= by.loc["a", "adherence_full"] <= by.loc["a", "adherence_full_hi"]
    write_report(tmp_path)  # the files: targets.csv with these columns, leaders.csv, targets.md stating the full model
    written = pd.read_csv(tmp_path / "targets.csv")
    assert {"p", "p_holm", "verdict_holm", "adherence_full", "adherence_d_full", "adherence_d_full_lo",
            "adherence_d_full_hi", "adherence_full_verdict"} <= set(written.columns)
    assert pd.read_csv(tmp_path / "leaders.csv").loc[0, "leader"] == "a"
    assert "Full model: adherence " in (tmp_path / "targets.md").read_text()
    # the at-a-glance table the README's is made of: ordered by PSNR, each against cat with Holm's verdict, the leader row
    glance = (tmp_path / "targets.md").read_text().split("## At a glance (tuned)")[1].split("\n## ")[0]
    rows = [line for line in glance.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["a", "b", "cat", "**leader - runner-up**"]
    a = by.loc["a"]
    assert rows[0] == f"| a | {a.psnr:.2f} ({a.d_cat:+.2f} [{a.d_cat_lo:+.2f}, {a.d_cat_hi:+.2f}] {a.verdict_holm}) |"
    assert rows[2] == f"| cat | {by.loc['cat', 'psnr']:.2f} |"
    assert rows[3].startswith(f"| **leader - runner-up** | a - b {row.margin:+.2f} [") and "better, p " in rows[3]


def test_without_the_full_models_scores_the_report_has_no_full_model_columns_and_says_so(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.normal(35, 3, P)
    _cell(tmp_path / "cat", "cat", {"psnr": base, "adherence": np.ones(P)})
    _cell(tmp_path / "a", "a", {"psnr": base + 1, "adherence": np.ones(P)})
    frame, leaders = report(load_cells(tmp_path), [0.5], "cat")
    assert "adherence_d_full" not in frame and "adherence_full" not in frame
    assert "its own adherence is not in this sweep (its cells have no `cells/full.json`" in markdown(frame, "t", "cat", leaders)


def test_the_p_value_of_a_paired_comparison_comes_from_its_own_resamples():
    rng = np.random.default_rng(5)
    ref = Cell.of("ref", 0.5, {"psnr": rng.normal(35, 3, P)})
    other = Cell.of("x", 0.5, {"psnr": ref.values["psnr"] + 0.3 + rng.normal(0, 0.5, P)})
    idx = resamples(P)
    out = compare(AtTarget(0.5, (other,)), AtTarget(0.5, (ref,)), "psnr", idx)
    d = (other.values["psnr"][idx] - ref.values["psnr"][idx]).mean(axis=1)
    assert out["p"] == pytest.approx(bootstrap_p(d[1:]))
    assert (out["p"] <= 0.05) == (out["verdict"] == "better")


def test_a_large_family_draws_enough_resamples_that_holm_can_reject_a_clear_difference(tmp_path):
    """180 methods against CAT (181 tests with the leader's): with 2000 resamples the smallest bootstrap p-value,
    2/2001, times 181 is above 0.05 and nothing could survive Holm; the report draws enough that a 10 dB lead does."""
    from experiments.compare.matched import family_resamples

    assert family_resamples(181) * ALPHA >= 10 * 181 and family_resamples(10) == 2000
    assert 181 * 2 / 2001 > ALPHA  # why it matters
    rng = np.random.default_rng(5)
    base = rng.normal(35, 3, P)
    _cell(tmp_path / "cat", "cat", {"psnr": base})
    for i in range(180):
        _cell(tmp_path / f"m{i:03d}", f"m{i:03d}", {"psnr": base + 10 + rng.normal(0, 1, P)})
    frame, _ = report(load_cells(tmp_path), [0.5], "cat")
    tested = frame[frame.p.notna()]
    assert len(tested) == 180 and (tested.verdict_holm == "better").all()
