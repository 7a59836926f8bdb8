"""scripts/calibrate.py warns when a method whose calibration selects among many candidates (forecast_search's
schedules) is measured on part of the calibration split: on the PixArt model a schedule searched on 8 prompts was
2.8 dB below evenly spaced full steps on the 24 calibration prompts it never saw (docs/results.md)."""

import importlib.util
from pathlib import Path

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
