"""Matched compute and paired verdicts on synthetic data with a known answer."""

import numpy as np
import pytest

from experiments.compare.matched import AtTarget, Cell, at_target, compare, mixture_weight, resamples, verdict

P = 64


def cell(setting, reduction, psnr):
    return Cell.of(setting, reduction, {"psnr": psnr})


def test_a_cell_at_the_target_is_taken_alone_and_a_discrete_knob_is_mixed_between_its_brackets():
    cells = [cell("interval=2", 0.40, np.full(P, 34.0)), cell("interval=3", 0.60, np.full(P, 30.0)),
             cell("interval=4", 0.70, np.full(P, 28.0))]
    exact = at_target(cells, 0.405)
    assert [c.setting for c in exact.cells] == ["interval=2"] and exact.setting == "interval=2"
    mixed = at_target(cells, 0.5)
    assert [c.setting for c in mixed.cells] == ["interval=2", "interval=3"]
    assert mixed.setting == "interval=2 (50%) + interval=3 (50%)"  # never "interval=2.5"
    out = compare(mixed, None, "psnr", resamples(P))
    assert out["psnr"] == pytest.approx(32.0) and out["psnr_lo"] == pytest.approx(32.0) == out["psnr_hi"]
    assert at_target(cells, 0.55).setting == "interval=2 (25%) + interval=3 (75%)"
    assert at_target(cells, 0.3) is None and at_target(cells, 0.8) is None  # out of the method's reach


def test_the_mixture_weight_is_recomputed_in_every_resample_from_per_prompt_macs():
    rng = np.random.default_rng(1)
    a = cell("threshold=0.1", rng.uniform(0.3, 0.5, P), rng.normal(35, 1, P))
    b = cell("threshold=0.2", rng.uniform(0.5, 0.7, P), rng.normal(31, 1, P))
    method = AtTarget(0.5, (a, b))
    idx = resamples(P, 50, seed=3)
    brute = []
    for rows in idx:  # one resample at a time, by hand
        ra, rb = a.reduction[rows].mean(), b.reduction[rows].mean()
        w = min(max((0.5 - ra) / (rb - ra), 0), 1)
        brute.append((1 - w) * a.values["psnr"][rows].mean() + w * b.values["psnr"][rows].mean())
    assert method.means("psnr", idx) == pytest.approx(np.array(brute))
    assert mixture_weight(0.5, 0.4, 0.6) == pytest.approx(0.5)


def test_paired_verdicts_have_the_known_answer():
    rng = np.random.default_rng(0)
    cat = cell("keep_ratio=0.3", 0.5, rng.normal(33, 3, P))  # prompts differ a lot from each other
    ref = AtTarget(0.5, (cat,))
    idx = resamples(P)

    def judge(offset, noise):
        other = cell("x", 0.5, cat.values["psnr"] + offset + rng.normal(0, noise, P))
        return compare(AtTarget(0.5, (other,)), ref, "psnr", idx)

    better = judge(1.0, 0.3)
    assert better["verdict"] == "better" and better["d_lo"] > 0 and better["d"] == pytest.approx(1.0, abs=0.1)
    assert judge(-1.0, 0.3)["verdict"] == "worse"
    same = judge(0.0, 0.2)  # per-method intervals of +-0.7 dB would overlap; the paired one is narrow
    assert same["verdict"] == "equivalent" and -0.5 < same["d_lo90"] and same["d_hi90"] < 0.5
    assert judge(0.0, 3.0)["verdict"] == "undetermined"
    for out in (better, same):
        assert out["psnr_lo"] <= out["psnr"] <= out["psnr_hi"] and out["d_lo"] <= out["d"] <= out["d_hi"]


def test_lower_is_better_metrics_turn_the_verdict_around():
    assert verdict((0.1, 0.2), (0.12, 0.18), 0.01, lower_is_better=True) == "worse"
    assert verdict((0.1, 0.2), (0.12, 0.18), 0.01) == "better"
    assert verdict((-0.3, 0.3), (-0.2, 0.2), 0.5) == "equivalent"
    assert verdict((-0.3, 0.3), (-0.2, 0.6), 0.5) == "undetermined"


def test_identical_images_score_the_psnr_ceiling_and_a_setting_that_saves_nothing_is_never_mixed_in():
    import torch

    from experiments.metrics.fidelity import psnr, psnr_ceiling

    x = torch.randint(0, 256, (3, 3, 8, 8)) / 255.0
    one_level = x.clone()
    one_level[1, 0, 0, 0] += 1 / 255 if x[1, 0, 0, 0] < 1 else -1 / 255
    p = psnr(x, torch.stack([x[0], one_level[1], 1 - x[2]]))
    p = p.tolist()
    assert p[0] == pytest.approx(psnr_ceiling(3 * 8 * 8)) and p[1] == pytest.approx(p[0], abs=1e-3)  # identical = best finite
    assert np.isfinite(p).all() and p[2] < p[1]
    # a knob that jumps from saving nothing (the full model's images: the ceiling on every prompt) to past the
    # target: mixed, 27% of the prompts at the ceiling would lift 24.6 dB to 42.3 dB, a value set by the ceiling
    ceiling = psnr_ceiling(3 * 64 * 64)
    same = cell("fresh_ratio=1", 0.0, np.full(P, ceiling))
    other = cell("fresh_ratio=0.9", 0.551, np.full(P, 24.6))
    assert at_target([same, other], 0.4) is None  # out of reach, not 42.3 dB
    assert at_target([same, other], 0.55).cells == (other,)  # the real setting alone, within tol
    with pytest.raises(ValueError, match="save MACs"):
        AtTarget(0.4, (same, other))
    # a setting that saves MACs on some prompt is a setting: its identical prompts keep the ceiling
    partly = cell("threshold=0.01", np.r_[0.0, np.full(P - 1, 0.3)], np.r_[ceiling, np.full(P - 1, 40.0)])
    mixed = at_target([same, partly, other], 0.4)
    assert [c.setting for c in mixed.cells] == ["threshold=0.01", "fresh_ratio=0.9"]
    out = compare(mixed, None, "psnr", resamples(P))
    assert np.isfinite([out["psnr"], out["psnr_lo"], out["psnr_hi"]]).all()
    with pytest.raises(ValueError, match="not finite"):  # results holding infinities are refused, never averaged
        cell("made by older code", 0.0, np.r_[np.inf, np.full(P - 1, 40.0)])
    with pytest.raises(ValueError, match="reduction is not finite"):  # NaN is on neither side of a target
        cell("no count", np.r_[np.nan, np.full(P - 1, 0.4)], np.full(P, 40.0))


def test_a_mixture_must_bracket_its_target():
    a, b = cell("k=1", 0.30, np.full(P, 35.0)), cell("k=2", 0.42, np.full(P, 33.0))
    with pytest.raises(ValueError, match="bracket"):  # both below 50%: clipped, it would be a 42% row labelled 50%
        AtTarget(0.5, (a, b))
    assert at_target([a, b], 0.5) is None
