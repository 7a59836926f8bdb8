"""The speed benchmark runs end to end at a tiny size (its figures come from `python scripts/bench_speed.py`)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

import cat

spec = importlib.util.spec_from_file_location("bench_speed", Path(__file__).resolve().parents[1] / "scripts" / "bench_speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_bench_runs_and_reports_ratios():
    r = bench.run(layers=1, heads=2, grid=8, text=8, steps=6, repeats=1,
                  method=cat.CATConfig(warmup_steps=3, num_clusters=4))
    assert 0 < r["macs_ratio_step"] < 1
    assert r["macs_speedup_schedule"] > 1
    assert r["speedup_efficiency"] > 0 and r["selection_overhead"] > 0 and r["cache_mb"] > 0


def printed(out: str) -> dict:
    """The `key=value` lines the benchmark prints, numbers as floats."""
    pairs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and " " not in line.split("=")[0])
    return {k: float(v) if v.replace(".", "", 1).replace("e-", "", 1).replace("e+", "", 1).isdigit() else v
            for k, v in pairs.items()}


def row(out: str, label: str) -> str:
    """The value of a row of the benchmark's printed table."""
    return next(line[len(label):].strip() for line in out.splitlines() if line.startswith(label))


@pytest.mark.slow
def test_bench_times_a_shipped_model_end_to_end(capsys):
    bench.main(["--model", "tiny_sd3_shapes", "--device", "cpu", "--warmup", "0", "--repeats", "1"])
    r = printed(capsys.readouterr().out)
    assert r["model"] == "tiny_sd3_shapes" and r["device"] == "cpu" and r["method_name"] == "cat"
    assert r["repeats"] == 1 and r["latency_full_spread_s"] == 0 and r["latency_spread_s"] == 0
    assert r["latency_full_s"] > 0 and r["latency_s"] > 0
    assert "peak_mb" not in r and "peak_full_mb" not in r  # the CPU process's peak says nothing of a method
    assert r["speedup_eager_noisy"] == 1  # one turn: no spread to judge by
    # one turn: the speedup is the ratio of the two printed times
    assert r["speedup_eager"] == pytest.approx(r["latency_full_s"] / r["latency_s"], rel=1e-3)


def test_bench_on_the_default_geometry_prints_the_keys(capsys, tmp_path):
    argv = ["--default-geometry", "--prompts", "2", "--steps", "4", "--repeats", "1", "--out", str(tmp_path / "r.json")]
    bench.main(argv)
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "r.json").read_text())  # every figure, with the command and the code
    assert written["command"] == ["scripts/bench_speed.py", *argv] and written["provenance"]["torch"]
    assert written["cores"] >= 1 and written["result"]["speedup_eager"] == pytest.approx(printed(out)["speedup_eager"],
                                                                                         rel=1e-4)
    assert "written: " in out
    assert "6 layers, hidden 96, 256 image tokens, 16 text tokens, CFG batch 4" in out
    r = printed(out)
    for key in ("speedup_eager", "speedup_efficiency", "selection_overhead", "cache_mb", "cache_mb_lean", "peak_mb"):
        assert isinstance(r[key], float) and r[key] > 0, key
    low, high = map(float, r["speedup_eager_range"].split("-"))
    assert low <= r["speedup_eager"] <= high  # the median of the turns' ratios lies among them
    assert r["speedup_eager"] == pytest.approx(float(row(out, "wall-clock speedup, whole schedule").rstrip("x")),
                                               abs=1e-3)
    macs_speedup = float(row(out, "MACs speedup, whole schedule").rstrip("x"))
    assert macs_speedup > 1  # 4 steps: at least one is pruned
    assert r["speedup_efficiency"] == pytest.approx(r["speedup_eager"] / macs_speedup, rel=2e-3)
    assert r["cache_mb_lean"] <= r["cache_mb"]
    full, pruned = (float(v.split()[0]) for v in row(out, "MACs per step, full / accelerated").split(" / "))
    assert float(row(out, "MACs ratio, accelerated step")) == pytest.approx(pruned / full, abs=0.06)


def test_variants_are_timed_in_turns():
    calls = []
    clock = iter([2.0, 1.0, 4.0, 1.0, 2.2, 1.0])
    times = bench.in_turns({"full": lambda: calls.append("full") or next(clock),
                            "cat": lambda: calls.append("cat") or next(clock)}, 3)
    assert calls == ["full", "cat"] * 3
    assert times == {"full": [2.0, 4.0, 2.2], "cat": [1.0, 1.0, 1.0]}
    assert bench.paired_speedup(times, "full", "cat") == 2.2  # the median of the turns' ratios


@pytest.mark.slow
def test_compiled_bench_reports_one_graph_per_step_kind():
    r = bench.run(layers=3, heads=2, grid=8, text=8, steps=6, repeats=1, compile=True, schedule_repeats=2,
                  method=cat.CATConfig(warmup_steps=3, num_clusters=4))
    assert r["graphs"] <= 3 and r["recompiles"] == 0 and r["graph_breaks"] == 0
    assert r["speedup_compiled"] > 0 and r["speedup_compiled_vs_eager_full"] > 0


@pytest.mark.slow
def test_a_cat_variant_is_timed_against_plain_cat():
    from cat.methods.cat_budget import CATBudgetConfig

    method = CATBudgetConfig(warmup_steps=2, num_clusters=4, schedule_slope=1.0, schedule_block=1, forecast=0.5)
    assert method.base() == cat.CATConfig(warmup_steps=2, num_clusters=4)
    assert cat.CATConfig().base() is None and cat.METHODS["fora"]().base() is None
    r = bench.run(layers=1, heads=2, grid=8, text=8, steps=6, repeats=1, method=method, schedule_repeats=2)
    # the same total MACs as plain CAT at its keep ratio; the extra time is a share of a full step
    assert r["cat_macs_speedup"] == pytest.approx(r["macs_speedup_schedule"], rel=0.02)
    low, high = (float(v) for v in r["overhead_vs_cat_range"].split(" to "))
    assert low <= r["overhead_vs_cat"] <= high
    assert r["overhead_total"] == pytest.approx(r["overhead_vs_cat"] + r["selection_overhead"])
    assert r["cat_speedup_efficiency"] > 0


def test_overhead_per_step_is_a_share_of_a_full_step():
    times = {"full": [28.0, 28.0], "method": [11.0, 12.0], "cat": [10.0, 10.0]}
    # 20 pruned steps of a 28-step schedule; a full step takes 1 s: 1 s over 20 steps = 5% of a step
    assert bench.overhead_per_step(times, "method", "cat", 20, 28) == pytest.approx([0.05, 0.10])


@pytest.mark.parametrize("argv, message", [
    (["--method", "bogus"], "--method 'bogus' is invalid; allowed: cat, cat_budget,"),
    (["--default-geometry", "--method", "bogus"], "--method 'bogus' is invalid; allowed: cat, cat_budget, cat_fora, "
                                                  "cat_no_cluster,"),  # conf/method's files there
    (["--peer", "bogus"], "--peer 'bogus' is invalid"),
    (["--set", "keep"], "--set 'keep' is invalid; allowed: FIELD=VALUE"),
    (["--out", "speed.txt"], "--out speed.txt: a .json file"),
])
def test_a_bad_method_is_one_line(capsys, argv, message):
    """Issue 34: `--method bogus` was a KeyError traceback."""
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_step_cache_prints_its_own_time_per_step(capsys):
    """Issue 37: the budgeted forecasting cache's overhead per step, a share of a full step (no timing asserted:
    the figures come from a quiet machine)."""
    bench.main(["--method", "forecast_search", "--set", "actions=FFfFff", "--set", "correction=none", "--steps", "6",
                "--layers", "1", "--heads", "2", "--grid", "8", "--text", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    # a difference of two timings: at this size it may be below zero
    r = {key: float(value) for key, value in printed(out).items() if key.startswith("overhead")}
    assert set(r) == {"overhead_per_step", "overhead_full_step", "overhead_skipped_step"}
    # the schedule's mean over its three full and three skipped steps
    assert r["overhead_per_step"] == pytest.approx((r["overhead_full_step"] + r["overhead_skipped_step"]) / 2, abs=1e-4)
    assert row(out, "method's own time per step / full step").endswith("%)")


def test_a_step_cache_without_its_calibration_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--method", "forecast_search", "--steps", "6"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "needs its segment costs measured" in err and "--default-geometry" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_searched_schedule_of_the_embedded_default_prints_its_overhead(capsys):
    bench.main(["--default-geometry", "--method", "forecast_search", "--prompts", "2", "--steps", "28", "--repeats",
                "1", "--schedule-repeats", "1"])
    r = printed(capsys.readouterr().out)
    assert math.isfinite(float(r["overhead_per_step"])) and r["speedup_eager"] > 0
