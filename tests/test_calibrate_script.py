"""scripts/calibrate.py: it warns when a method whose calibration selects among many candidates (forecast_search's
schedules) is measured on part of the calibration split (on the PixArt model a schedule searched on 8 prompts was
2.8 dB below evenly spaced full steps on the 24 calibration prompts it never saw, docs/results.md), and an
interrupted calibration resumes where it stopped."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

import cat
from cat.methods.forecast_search import ForecastSearchConfig

spec = importlib.util.spec_from_file_location("calibrate", Path(__file__).resolve().parents[1] / "scripts" / "calibrate.py")
calibrate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calibrate)


def test_a_selecting_calibration_on_part_of_the_split_is_warned_about_and_names_the_fix():
    said = calibrate.few_prompts_warning(ForecastSearchConfig, 8, 32)
    assert said is not None and "8 of the calibration split's 32 prompts" in said and "data.limit=32" in said
    assert calibrate.few_prompts_warning(ForecastSearchConfig, 32, 32) is None


def test_only_the_methods_whose_calibration_selects_are_warned_about():
    selecting = {name for name, config in cat.METHODS.items() if config.calibration_selects}
    assert selecting == {"forecast_search"}
    assert calibrate.few_prompts_warning(cat.METHODS["magcache"], 8, 32) is None  # a mean of ratios: no selection


def test_an_interrupted_calibration_resumes_at_the_first_prompt_it_had_not_finished(tmp_path):
    """Each prompt's measurement is kept as it is made; a rerun measures only what is missing, a kept one is
    read back only for the same prompt text, and a resumed calibration gets exactly what a whole one gets."""
    from experiments.prompts.sets import prompts_of

    prompts = prompts_of({"name": "shapes", "split": "calibration", "limit": 4})
    calls, kill_at = [], [3]

    def measure(p):
        calls.append(p.index)
        if len(calls) in kill_at:
            raise KeyboardInterrupt  # killed while measuring
        return {"costs": [p.index / 3, 1e-9 * p.index], "prompt_length": len(p.text)}

    with pytest.raises(KeyboardInterrupt):
        calibrate.measure_each(prompts, measure, tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"{p.index}.json" for p in prompts[:2]]
    calls.clear()
    kill_at.clear()
    resumed = calibrate.measure_each(prompts, measure, tmp_path)
    assert calls == [p.index for p in prompts[2:]]
    assert resumed == [{"costs": [p.index / 3, 1e-9 * p.index], "prompt_length": len(p.text)} for p in prompts]
    calls.clear()
    moved = [prompts[1], dataclasses.replace(prompts[0], text="another prompt")]  # a kept file of other text
    calibrate.measure_each(moved, lambda p: calls.append(p.index) or {"costs": []}, tmp_path)
    assert calls == [prompts[0].index]
    calls.clear()
    calibrate.measure_each(prompts, lambda p: calls.append(p.index) or {"costs": []}, tmp_path, overwrite=True)
    assert calls == [p.index for p in prompts]


def composed(*overrides):
    from hydra import compose, initialize_config_dir

    from experiments.base.config_files import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides, said", [
    (["method=cat"], "method=cat has no calibration; methods with one: forecast_search, magcache, teacache"),
    (["method=none"], "needs a method: python scripts/calibrate.py method=<name> ...; methods with a calibration"),
    (["method=magcache", "data.limit=0"], "data.limit=0 is invalid for a calibration; allowed: a positive count, -1"),
    (["method=magcache", "data.limit=-2"], "data.limit=-2 is invalid"),
    (["method=magcache", "model.steps=0"], "model.steps=0 is invalid; allowed: an integer >= 1"),
])
def test_what_cannot_be_calibrated_is_one_line_before_any_model_loads(monkeypatch, overrides, said):
    import experiments.run.pipelines

    monkeypatch.setattr(experiments.run.pipelines, "load_pipeline", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(SystemExit) as stop:
        calibrate.calibrate(composed(*overrides))
    assert said in str(stop.value)


def test_data_limit_is_read_as_run_py_reads_it():
    """-1 is every prompt of the calibration split (it was 1 prompt); null keeps the default of 8."""
    assert calibrate.prompt_limit(-1) is None and calibrate.prompt_limit(None) == 8 and calibrate.prompt_limit(3) == 3


def test_hydras_log_goes_to_a_logs_folder_not_a_stub_run_folder():
    """By default Hydra's run folder is run.py's run folder of the same overrides, left behind as a stub."""
    argv = ["calibrate.py", "method=magcache"]
    assert calibrate.with_log_folder(argv, "calibrate") == [*argv, "hydra.run.dir=${output_root}/logs/calibrate"]
    assert calibrate.with_log_folder([*argv, "hydra.run.dir=x"], "calibrate") == [*argv, "hydra.run.dir=x"]
