"""The comparison's pieces on synthetic data with known answers: the knob search, the variants' settings,
the tuning grid, and the report that pairs every method with CAT at each target."""

import json

import numpy as np
import pandas as pd
import pytest

import cat
from experiments.compare.search import find_knob
from experiments.compare.settings import Plan, candidates, describe, reference_warmup, setting_key, variant_base
from experiments.reports.targets import load_cells, table, write_report


def test_the_knob_search_reaches_a_target_in_a_few_counts_on_a_nearly_linear_reduction():
    calls = []

    def reduction(keep):  # CAT-like: 8 of 28 steps full, the rest at the keep ratio, slightly curved
        calls.append(keep)
        return (20 / 28) * (1 - keep) ** 1.05

    found = find_knob(reduction, 0.01, 1.0, 0.5, tol=0.002)
    assert abs(found.reduction - 0.5) <= 0.002 and len(calls) <= 6
    assert find_knob(reduction, 0.01, 1.0, 0.75) is None  # beyond the warm-up's reach


def test_the_knob_search_keeps_the_target_bracketed_on_a_stepwise_reduction():
    def reduction(threshold):  # a threshold skips whole steps: a staircase
        return np.floor(threshold * 20) / 28

    found = find_knob(reduction, 0.0, 1.0, 0.5, tol=0.01, max_iter=12)
    assert abs(found.reduction - 0.5) <= 1 / 28  # the nearest step of the staircase
    assert find_knob(reduction, 0.0, 1.0, 0.9) is None


def test_a_plan_needs_a_knob_and_a_domain_and_drops_null_grid_entries():
    plan = Plan.of({"name": "cat", "knob": "keep_ratio", "levels": [0.1], "knob_range": [0.01, 1.0],
                    "tune": {"warmup_steps": [3, 8], "num_clusters": None}})
    assert plan.continuous and plan.tune == {"warmup_steps": [3, 8]}
    assert not Plan.of({"name": "fora", "knob": "interval", "levels": [2, 3, 4]}).continuous
    with pytest.raises(ValueError, match="knob_range.*levels"):
        Plan.of({"name": "fora", "knob": "interval", "levels": [2]})
    with pytest.raises(ValueError, match="compute knob"):
        Plan.of({"name": "x", "levels": [1, 2]})
    with pytest.raises(ValueError, match="low < high"):
        Plan.of({"name": "cat", "knob": "keep_ratio", "knob_range": [1.0, 0.1]})


def test_the_authors_variant_is_the_authors_setting_for_the_models_architecture():
    mmdit, pixart = variant_base(cat.ToCaConfig(), "authors", "sd3", 28), variant_base(cat.ToCaConfig(), "authors", "pixart", 28)
    assert (mmdit.interval, mmdit.fresh_ratio, mmdit.warmup_steps) == (4, 0.1, 3)
    assert (pixart.interval, pixart.fresh_ratio, pixart.warmup_steps) == (3, 0.3, 1)
    seer = variant_base(cat.TaylorSeerConfig(), "authors", "flux", 28)
    assert (seer.cache_interval, seer.max_order, seer.warmup_steps) == (6, 1, 3)


def test_a_field_the_user_sets_is_kept_over_the_authors_value_and_left_out_of_the_tuning_grid():
    from omegaconf import OmegaConf

    from experiments.compare.settings import authors_conflicts, kept_fields

    configured = cat.ToCaConfig(fresh_ratio=0.5)
    assert variant_base(configured, "authors", "sd3", 28).fresh_ratio == 0.1  # the authors' value, unless kept
    kept = variant_base(configured, "authors", "sd3", 28, keep=("fresh_ratio",))
    assert (kept.fresh_ratio, kept.interval, kept.warmup_steps) == (0.5, 4, 3)  # the rest stays the authors'
    assert authors_conflicts(cat.ToCaConfig(interval=2), "sd3", 28, (), "fresh_ratio") == {"interval": (2, 4)}
    assert authors_conflicts(cat.ToCaConfig(interval=2), "sd3", 28, ("interval",), "fresh_ratio") == {}
    assert authors_conflicts(cat.ToCaConfig(interval=2), "sd3", 28, (), "fresh_ratio", frozenset({"interval"})) == {}
    cfg = OmegaConf.create({"compare": {"keep": ["fresh_ratio", "interval"]}})
    assert kept_fields(cfg, knob="interval") == ("fresh_ratio",)  # the knob is the search's to move


def test_shared_warmup_gives_every_method_cats_warmup_and_skips_a_method_without_one():
    for config in (cat.FORAConfig(), cat.ToCaConfig(), cat.TaylorSeerConfig(), cat.FBCacheConfig()):
        assert variant_base(config, "shared_warmup", "sd3", 28, reference_warmup("cat", "sd3", 28)).warmup_steps == 8
    ras = variant_base(cat.RASConfig(), "shared_warmup", "sd3", 28, 8)
    assert ras.warmup_steps == 8
    assert variant_base(cat.StepsConfig(), "shared_warmup", "sd3", 28) is None


def test_the_tuned_grid_holds_the_base_first_and_leaves_out_invalid_and_duplicate_settings():
    base = cat.RASConfig()
    plan = Plan("sample_ratio", (), (0.02, 1.0), {"warmup_steps": [4, 27, 30], "high_ratio": [0.3]})
    pool = candidates(base, plan, "tuned", 28, 256)
    assert pool[0] == base  # warm-up 4 and high ratio 0.3 are the base again: not repeated
    assert [c.warmup_steps for c in pool] == [4, 27]  # 30 is refused by check_steps (28 steps)
    assert candidates(base, plan, "authors", 28, 256) == [base]
    assert len({setting_key(c) for c in pool}) == len(pool)
    assert describe(pool[1], base, "sample_ratio") == "sample_ratio=0.5, warmup_steps=27"


P = 48


def _write_cell(folder, method, variant, targets, cells):
    """A compare cell on disk as experiments.tasks.compare writes it."""
    (folder / "cells").mkdir(parents=True)
    plan = {"method": method, "variant": variant, "targets": {}, "cells": []}
    for key, (reduction, psnr, adherence) in cells.items():
        row = {"key": key, "indices": list(range(P)), "reduction": list(np.broadcast_to(reduction, P)),
               "psnr": list(psnr), "ssim": list(np.clip(psnr / 50, 0, 1)), "adherence": list(adherence)}
        (folder / "cells" / f"{key}.json").write_text(json.dumps(row))
        plan["cells"].append(key)
    for target, keys in targets.items():
        plan["targets"][f"{target:g}"] = {"cells": keys, "labels": keys}
    (folder / "compare.json").write_text(json.dumps(plan))
    (folder / "config.yaml").write_text("model: {name: toy, steps: 28}\n")


def test_the_report_pairs_each_method_with_cat_at_the_same_target_and_variant(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(35, 3, P)  # prompts differ a lot; the methods' differences are small and paired
    ones = np.ones(P)
    _write_cell(tmp_path / "cat", "cat", "tuned", {0.5: ["k=0.3"]}, {"k=0.3": (0.5, base, ones)})
    _write_cell(tmp_path / "fora", "fora", "tuned", {0.5: ["interval=2", "interval=3"]},
                {"interval=2": (0.4, base + 2 + rng.normal(0, 0.2, P), ones),
                 "interval=3": (0.6, base - 1 + rng.normal(0, 0.2, P), ones)})
    _write_cell(tmp_path / "ras", "ras", "tuned", {0.5: ["r=0.4"]},
                {"r=0.4": (0.5, base + rng.normal(0, 0.1, P), ones)})
    _write_cell(tmp_path / "fora_a", "fora", "authors", {0.5: ["interval=3"]},
                {"interval=3": (0.6, base - 1, ones)})
    frame = table(load_cells(tmp_path), [0.5], "cat").set_index(["method", "variant"])
    fora = frame.loc[("fora", "tuned")]
    assert fora.setting == "interval=2 (50%) + interval=3 (50%)" and fora.reduction == pytest.approx(0.5)
    assert fora.d_cat == pytest.approx(0.5, abs=0.1) and fora.d_cat_lo <= fora.d_cat <= fora.d_cat_hi
    assert frame.loc[("ras", "tuned")].verdict == "equivalent"
    assert frame.loc[("ras", "tuned")].adherence_verdict == "equivalent"
    assert np.isnan(frame.loc[("cat", "tuned")].get("d_cat", np.nan))  # CAT is the reference
    # a single setting off its target, with nothing of its variant on the other side: not reached
    assert ("fora", "authors") not in frame.index
    for _, row in frame.iterrows():
        assert row.psnr_lo <= row.psnr <= row.psnr_hi
    written = write_report(tmp_path)
    assert (tmp_path / "targets.csv").exists() and (tmp_path / "figures" / "targets_psnr.png").exists()
    assert "50% fewer executed MACs" in (tmp_path / "targets.md").read_text() and len(written) == len(frame)


def test_cells_evaluated_on_different_prompts_are_never_paired(tmp_path):
    _write_cell(tmp_path / "cat", "cat", "tuned", {0.5: ["a"]}, {"a": (0.5, np.ones(P), np.ones(P))})
    other = tmp_path / "ras"
    _write_cell(other, "ras", "tuned", {0.5: ["b"]}, {"b": (0.5, np.ones(P), np.ones(P))})
    row = json.loads((other / "cells" / "b.json").read_text())
    row["indices"] = list(range(1, P + 1))
    (other / "cells" / "b.json").write_text(json.dumps(row))
    with pytest.raises(ValueError, match="different prompts"):
        table(load_cells(tmp_path), [0.5], "cat")


def test_a_report_against_another_method_names_its_differences_after_it(tmp_path, capsys):
    from experiments.reports import targets

    base = np.random.default_rng(1).normal(35, 3, P)
    ones = np.ones(P)
    _write_cell(tmp_path / "cat", "cat", "tuned", {0.5: ["k=0.3"]}, {"k=0.3": (0.5, base, ones)})
    _write_cell(tmp_path / "cb", "cat_budget", "tuned", {0.5: ["k=0.3,s=1"]}, {"k=0.3,s=1": (0.5, base + 1, ones)})
    _write_cell(tmp_path / "fora", "fora", "tuned", {0.5: ["interval=2"]}, {"interval=2": (0.5, base - 1, ones)})
    targets.main([str(tmp_path), "--reference", "cat_budget"])
    frame = pd.read_csv(tmp_path / "targets_vs_cat_budget.csv").set_index("method")
    assert frame.loc["fora", "d_cat_budget"] == pytest.approx(-2) and frame.loc["cat", "d_cat_budget"] == pytest.approx(-1)
    assert frame.loc["fora", "verdict"] == "worse" and "d_cat" not in frame
    assert "`d_cat_budget` = method - cat_budget" in (tmp_path / "targets_vs_cat_budget.md").read_text()
    assert not (tmp_path / "targets.csv").exists()  # the CAT report is another file
    with pytest.raises(SystemExit, match="not a method of this sweep; its methods: cat, cat_budget, fora"):
        targets.main([str(tmp_path), "--reference", "toca"])



def test_an_offline_count_is_made_once_per_model_and_setting(monkeypatch):
    from types import SimpleNamespace

    from experiments.compare import calibration

    counts = []

    def report(model, config):
        counts.append((model["steps"], config))
        return SimpleNamespace(macs_reduction=0.5)

    monkeypatch.setattr(calibration, "report_for_model", report)
    calibration._counted.cache_clear()
    model = {"name": "m", "steps": 28, "transformer": {"class": "SD3Transformer2DModel", "config": {"a": 1}}}
    for _ in range(2):  # another cell of the sweep asks again
        assert calibration.offline_reduction(dict(model), cat.FORAConfig(interval=2), 28, 256) == 0.5
    calibration.offline_reduction({**model, "steps": 20}, cat.FORAConfig(interval=2), 20, 256)
    assert counts == [(28, cat.FORAConfig(interval=2)), (20, cat.FORAConfig(interval=2))]
    assert calibration.offline_reduction(model, cat.FBCacheConfig(), 28, 256) is None  # decided while it runs
    calibration._counted.cache_clear()


def test_a_search_reads_a_stored_setting_on_its_first_batch_and_leaves_the_run_folder_alone(tmp_path):
    """A setting another cell scored on all the calibration prompts: the search's reduction is its first
    batch's mean, as a search that ran the first batch alone measures it, and nothing enters the run's folder."""
    from types import SimpleNamespace

    from experiments.compare.bench import Bench
    from experiments.prompts.sets import Prompt

    prompts = [Prompt(i, f"p{i}") for i in range(4)]
    full = tmp_path / "full_images" / "m-key"
    bench = Bench(SimpleNamespace(batch_size=2, seed=0), None, {}, prompts, full, tmp_path / "run" / "calibration", [])
    config = cat.FBCacheConfig(threshold=0.2)
    key = setting_key(config)
    bench.shared.mkdir(parents=True)
    (bench.shared / f"{key}.json").write_text(json.dumps({"key": key, "indices": [0, 1, 2, 3],
                                                          "reduction": [0.2, 0.2, 0.6, 0.6]}))
    assert bench.reduction(config) == pytest.approx(0.2) and bench.searched == {key: pytest.approx(0.2)}
    assert not bench.folder.exists() and not bench.memo


def _choose(variant, targets):
    """`choose` for FBCache (its reduction known only by running it) on a synthetic calibration bench: the
    settings it measured, and its choice."""
    from omegaconf import OmegaConf

    import experiments.metrics  # noqa: F401  registers the objective
    from experiments.compare.calibration import choose

    measured = []

    class Calibration:  # a staircase of skipped steps, capped by the warm-up's full steps
        def reduction(self, config, label=""):
            measured.append((config.threshold, config.warmup_steps))
            return (1 - config.warmup_steps / 28) * min(1.0, (config.threshold * 30) // 1 / 30 * 1.6)

        def score(self, config, metric, label=""):
            return 50 - 30 * self.reduction(config) - abs(config.warmup_steps - 5)

    cfg = OmegaConf.create({"method": {"name": "fbcache", "knob": "threshold", "knob_range": [0.0, 1.0],
                                       "tune": {"warmup_steps": [3, 5, 8, 10]}},
                            "compare": {"variant": variant, "targets": targets, "tolerance": 0.01},
                            "model": {"steps": 28}, "paired_reference": "cat"})
    chosen = choose(cfg, cat.FBCacheConfig(), Calibration(), {}, "sd3", 256)
    return set(measured), chosen


def test_a_setting_searched_in_two_variants_lands_on_the_same_runs_and_an_unreachable_target_runs_nothing():
    """The shared warm-up's setting is one of the tuned grid's: its search measures only what the tuned cell's
    measured (the bench reads them); the tuned grid's warm-up 10 leaves 64% within reach, so at 70% it runs nothing."""
    tuned, chosen = _choose("tuned", [0.3, 0.5, 0.7])
    shared, _ = _choose("shared_warmup", [0.3, 0.5, 0.7])
    assert {w for _, w in shared} == {8} and shared <= tuned
    assert {w for _, w in tuned} == {3, 5, 8, 10}
    late, late_chosen = _choose("tuned", [0.7])
    assert {w for _, w in late} == {3, 5, 8}
    for target, choice in (*chosen.items(), *late_chosen.items()):
        assert "warmup_steps=10" not in choice["settings"][0][1] or target < 1 - 10 / 28
        if len(choice["settings"]) == 2:  # a bracket of two real settings, one whole step apart at most
            assert abs(choice["weights"][0] + choice["weights"][1] - 1) < 1e-9


def test_a_knob_that_jumps_from_saving_nothing_to_past_the_target_does_not_reach_it():
    """ToCa's fresh ratio, CAT+FORA's keep ratio: 1 saves nothing, anything below saves about half. The tuner never
    mixes the setting that saves nothing in (its PSNR is the ceiling of identical images): at 40% only the
    candidate whose knob reaches 40% on its own (warm-up 10 here) is chosen; at 20% none is."""
    from omegaconf import OmegaConf

    import experiments.metrics  # noqa: F401  registers the objective
    from experiments.compare.calibration import choose

    class Calibration:
        def reduction(self, config, label=""):
            if config.threshold <= 0.05:
                return 0.0
            return 0.5 * (1 - config.warmup_steps / 28) + (0.1 if config.warmup_steps == 10 else 0.3) * config.threshold

        def score(self, config, metric, label=""):
            return 30.0

    cfg = OmegaConf.create({"method": {"name": "fbcache", "knob": "threshold", "knob_range": [0.0, 1.0],
                                       "tune": {"warmup_steps": [3, 10]}},
                            "compare": {"variant": "tuned", "targets": [0.2, 0.4], "tolerance": 0.01},
                            "model": {"steps": 28}, "paired_reference": "cat"})
    chosen = choose(cfg, cat.FBCacheConfig(), Calibration(), {}, "sd3", 256)
    assert 0.2 not in chosen  # warm-up 3 jumps from 0 to 45%, warm-up 10 from 0 to 33%
    assert all(config.warmup_steps == 10 and config.threshold > 0.05 for config, _ in chosen[0.4]["settings"])


def test_a_tuned_method_picks_its_warmup_from_the_grid_only_and_a_relative_value_scales_the_base():
    fora = variant_base(cat.FORAConfig(), "tuned", "sd3", 28)
    assert fora.warmup_steps == 1  # the authors'
    pool = candidates(fora, Plan("interval", (2, 3), None, {"warmup_steps": [3, 5, 8, 10]}), "tuned", 28, 256)
    assert [c.warmup_steps for c in pool] == [3, 5, 8, 10]  # the authors' 1 is no tuned candidate
    assert candidates(fora, Plan("interval", (2, 3)), "tuned", 28, 256) == [fora]  # no grid: the base alone
    plan = Plan.of({"name": "cat", "knob": "keep_ratio", "knob_range": [0.01, 1.0],
                    "tune": {"warmup_steps": [3, 8], "num_clusters": {"times": [0.5, 1, 2]}}})
    for clusters in (8, 16):  # the model's cluster count, as conf/method/cat.yaml reads it
        pool = candidates(cat.CATConfig(num_clusters=clusters), plan, "tuned", 28, 1024)
        assert sorted({c.num_clusters for c in pool}) == [clusters // 2, clusters, 2 * clusters] and len(pool) == 6
    with pytest.raises(ValueError, match=r"allowed: a list of values or \{times: \[factors\]\}"):
        Plan.of({"name": "cat", "knob": "keep_ratio", "knob_range": [0.01, 1.0], "tune": {"num_clusters": {"x": [1]}}})
    with pytest.raises(ValueError, match="needs a numeric field"):
        candidates(cat.CATConfig(), Plan.of({"name": "cat", "knob": "keep_ratio", "knob_range": [0.01, 1.0],
                                             "tune": {"policy": {"times": [2]}}}), "tuned", 28, 256)
