"""Intervals, paired comparisons and the level sweep's report on small synthetic sweeps."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments.base.intervals import mean_ci, paired_ci, verdict
from experiments.reports import levels
from experiments.reports.paired import paired_against


def test_mean_ci_covers_the_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(0)
    small, large = rng.normal(30, 2, 8), rng.normal(30, 2, 128)
    m, lo, hi = mean_ci(small)
    assert lo < m < hi
    m2, lo2, hi2 = mean_ci(large)
    assert (hi2 - lo2) < (hi - lo)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="1 of 3 values are not finite"):  # never dropped: that changes the prompts
        mean_ci([1.0, float("inf"), 3.0])


def test_paired_intervals_see_a_small_consistent_difference_that_unpaired_ones_miss():
    rng = np.random.default_rng(1)
    base = rng.normal(35, 4, 32)  # prompts differ a lot
    better = base + 0.3 + rng.normal(0, 0.1, 32)  # the method is consistently 0.3 dB better
    d, lo, hi = paired_ci(better, base)
    assert verdict(lo, hi) == "higher" and lo > 0
    _, lo_a, hi_a = mean_ci(better)
    _, lo_b, hi_b = mean_ci(base)
    assert lo_a < hi_b  # unpaired intervals overlap
    assert verdict(*paired_ci(base + rng.normal(0, 0.1, 32), base)[1:]) == "no difference"


def _cell(root, name, method, values, **axes):
    d = root / name
    d.mkdir()
    lines = [json.dumps({"index": i, "variant": "full"}) for i in range(len(values))]
    lines += [json.dumps({"index": i, "variant": method, "psnr": v}) for i, v in enumerate(values)]
    (d / "records.jsonl").write_text("\n".join(lines) + "\n")
    return {"cell": name, "method": method, "status": "done", **axes}


def test_paired_against_matches_cells_on_every_other_axis(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.normal(35, 3, 32)
    rows = [
        _cell(tmp_path, "a", "cat", base, keep="0.2"),
        _cell(tmp_path, "b", "cat_random", base - 2 + rng.normal(0, 0.2, 32), keep="0.2"),
        _cell(tmp_path, "c", "cat", base + 5, keep="0.4"),
        _cell(tmp_path, "d", "cat_random", base + 5 + rng.normal(0, 0.2, 32), keep="0.4"),
    ]
    table = paired_against(pd.DataFrame(rows), tmp_path, metrics=("psnr",)).set_index("keep")
    assert table.loc["0.2", "reference"] == "a" and table.loc["0.4", "reference"] == "c"
    assert table.loc["0.2", "psnr_verdict"] == "lower" and table.loc["0.2", "d_psnr"] == pytest.approx(-2, abs=0.2)
    assert table.loc["0.4", "psnr_verdict"] == "no difference"


def test_paired_against_a_column_value_reference(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(35, 3, 32)
    rows = [
        {**_cell(tmp_path, "a", "cat", base), "legacy": "[]"},
        {**_cell(tmp_path, "b", "cat", base - 1 + rng.normal(0, 0.1, 32)), "legacy": "[random_kmeans_init]"},
        {**_cell(tmp_path, "c", "cat", base + rng.normal(0, 0.1, 32)), "legacy": "[scored_after_caching]"},
    ]
    table = paired_against(pd.DataFrame(rows), tmp_path, reference="legacy=[]", metrics=("psnr",)).set_index("legacy")
    assert set(table.reference) == {"a"}
    assert table.loc["[random_kmeans_init]", "psnr_verdict"] == "lower"
    assert table.loc["[scored_after_caching]", "psnr_verdict"] == "no difference"


def _level_frame():
    rows = []
    for method, offset in (("cat", 2.0), ("fora", 0.0), ("steps", -1.0)):
        for level, red in enumerate((0.3, 0.45, 0.6, 0.75)):
            psnr = 45 - 20 * red + offset
            rows.append({"cell": f"{method}{level}", "method": method, "level": str(level), "status": "done",
                         "macs_reduction": red, "speedup": 1 / (1 - red), "psnr": psnr, "psnr_lo": psnr - 0.5,
                         "psnr_hi": psnr + 0.5, "knob": "k", "knob_value": level})
    return pd.DataFrame(rows)


def test_the_50_percent_table_interpolates_and_marks_only_a_separated_best():
    frame = _level_frame()
    assert levels.is_level_sweep(frame.drop(columns=["knob", "knob_value"]))
    table = levels.interpolate_at(frame, 0.5)
    cat_row = table.set_index("method").loc["cat"]
    assert cat_row.psnr == pytest.approx(45 - 10 + 2) and cat_row.knob_value == pytest.approx(4 / 3)
    assert levels.best_marks(table, "psnr") == {"cat": "best"}
    close = frame.assign(psnr_lo=frame.psnr - 3, psnr_hi=frame.psnr + 3)
    assert levels.best_marks(levels.interpolate_at(close, 0.5), "psnr") == {}  # overlapping: no winner
    text = levels.table_markdown(table)
    assert "**" in text and "(best)" in text


def test_the_pareto_figure_draws_one_line_per_method(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its lines back
    frame = _level_frame()
    path = levels.pareto_figure(frame, "psnr", tmp_path / "pareto_psnr.png")
    assert path.exists() and path.stat().st_size > 10_000
    (fig,) = figures
    by_macs, by_speed = fig.axes
    for ax, x in ((by_macs, 100 * (1 - frame.macs_reduction)), (by_speed, frame.speedup)):
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("full")}
        assert sorted(lines) == ["cat", "fora", "steps"]
        for method, line in lines.items():
            cells = frame.method == method
            assert np.allclose(line.get_xdata(), sorted(x[cells], reverse=ax is by_macs))
            assert np.allclose(line.get_ydata(), frame.psnr[cells].sort_values(ascending=False))
    monkeypatch.undo()
    plt.close(fig)


def test_the_contrast_report_turns_the_pairs_around(tmp_path):
    """The clustering sweep's report as its sweep file declares it: cat - cat_no_cluster against the keep
    ratio, one line per cluster count."""
    from experiments.reports.contrast import Contrast, write_report

    keep, clusters = "method.config.keep_ratio", "method.config.num_clusters"
    spec = Contrast(name="clustering", cells="method=cat_no_cluster", x=keep, lines=clusters,
                    higher="clustering helps", lower="clustering hurts")
    rng = np.random.default_rng(4)
    base = rng.normal(35, 3, 32)
    rows = []
    for value in ("0.1", "0.3"):
        for k in ("4", "16"):
            gain = 1.0 if k == "16" else 0.0
            rows.append({**_cell(tmp_path, f"cat{value}{k}", "cat", base + gain + rng.normal(0, 0.1, 32)),
                         keep: value, clusters: k})
            rows.append({**_cell(tmp_path, f"nc{value}{k}", "cat_no_cluster", base + rng.normal(0, 0.1, 32)),
                         keep: value, clusters: k})
    frame = pd.DataFrame(rows)
    table = write_report(paired_against(frame, tmp_path, reference="cat", metrics=("psnr",)), tmp_path, spec,
                         "method=cat").set_index("num_clusters")
    assert (table.loc[16, "verdict"] == "clustering helps").all()
    assert table.loc[16, "d_psnr"].mean() == pytest.approx(1.0, abs=0.1)
    assert (table.loc[4, "verdict"] == "no difference").all()
    assert (tmp_path / "clustering.png").stat().st_size > 0
    assert "cat - cat_no_cluster" in (tmp_path / "clustering.md").read_text()
