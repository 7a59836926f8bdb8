"""A stored calibration is keyed on model, step count and guidance scale (`${calibrated:<field>}`,
experiments/lifecycle/resolvers.py): read for the run's own, refused with a clear message at another guidance scale, missing
at another step count (the method then names the command that calibrates it), and read for another step count or
guidance scale only when `method.calibration` asks for it."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

import experiments.lifecycle.resolvers  # noqa: F401
from experiments.base.config_files import ConfigError
from experiments.tasks.validation import method_config, validate

ROOT = Path(__file__).resolve().parents[3]
STORED = {"teacache": ("coefficients", ROOT / "assets" / "teacache" / "tiny_sd3_shapes-28.json"),
          "magcache": ("mag_ratios", ROOT / "assets" / "magcache" / "tiny_sd3_shapes-28.json")}


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("method", list(STORED))
def test_the_calibration_of_the_runs_model_steps_and_guidance_is_read(method):
    field, path = STORED[method]
    stored = json.loads(path.read_text())
    assert stored["model"] == "tiny_sd3_shapes" and stored["steps"] == 28 and stored["guidance_scale"] == 5.0
    assert stored["split"] == "calibration"  # never the evaluation prompts
    assert getattr(method_config(_compose([f"method={method}"])), field) == tuple(stored[field])


@pytest.mark.parametrize("method", list(STORED))
def test_another_guidance_scale_is_refused_unless_the_run_asks_for_it(method):
    field, path = STORED[method]
    cfg = _compose([f"method={method}", "model.guidance_scale=7.0"])
    with pytest.raises(InterpolationResolutionError,
                       match=rf"{path.parent.name}/tiny_sd3_shapes-28\.json was calibrated at guidance_scale=5\.0, this "
                             rf"run uses model\.guidance_scale=7\.0: calibrate at this guidance scale .* or reuse it "
                             rf"explicitly with method\.calibration\.guidance_scale=5\.0"):
        OmegaConf.to_container(cfg, resolve=True)
    reused = _compose([f"method={method}", "model.guidance_scale=7.0", "method.calibration.guidance_scale=5.0"])
    assert getattr(method_config(reused), field) == tuple(json.loads(path.read_text())[field])


def test_another_step_count_needs_its_own_calibration_or_an_explicit_reuse():
    with pytest.raises(ConfigError, match=r"method=teacache needs its rescaling polynomial calibrated for this model, "
                                          r"step count and guidance scale .* run `python scripts/calibrate\.py "
                                          r"method=teacache model=tiny_sd3_shapes model\.steps=20` once"):
        validate(_compose(["method=teacache", "model.steps=20"]))
    reused = method_config(_compose(["method=teacache", "model.steps=20", "method.calibration.steps=28"]))
    assert reused.coefficients == tuple(json.loads(STORED["teacache"][1].read_text())["coefficients"])


def test_another_guidance_scale_is_one_line_through_validation():
    """Issue 34: MagCache's calibration made at guidance 5 was used at guidance 1; the refusal is one line."""
    with pytest.raises(ConfigError, match=r"^method=magcache: assets/magcache/tiny_sd3_shapes-28\.json was calibrated "
                                          r"at guidance_scale=5\.0, this run uses model\.guidance_scale=1\.0"):
        validate(_compose(["method=magcache", "model.guidance_scale=1.0"]))


def test_magcache_ratios_of_another_step_count_need_stretch_ratios():
    """Asking for another step count's calibration (method.calibration.steps) is not enough to stretch its ratios:
    the library refuses a count mismatch unless `stretch_ratios` says so, and validation says it before loading."""
    asked = ["method=magcache", "model.steps=6", "method.calibration.steps=28"]
    with pytest.raises(ConfigError, match=r"MagCacheConfig\.mag_ratios holds 28 ratios .* this schedule has 6 steps: "
                                          r"calibrate at 6 steps, or set MagCacheConfig\.stretch_ratios=True"):
        validate(_compose(asked))
    assert validate(_compose([*asked, "method.config.stretch_ratios=true"])).stretch_ratios


def test_forecast_search_reads_its_segment_costs_keyed_like_the_others():
    """The budgeted forecasting cache's calibration (a record: segment costs, MACs, settings) is read for the run's
    model, step count and guidance scale; another guidance scale or step count asked for through
    `method.calibration` also needs the method's `reuse_calibration`, and validation says so before loading."""
    stored = json.loads((ROOT / "assets" / "forecast_search" / "tiny_sd3_shapes-28.json").read_text())
    assert stored["model"] == "tiny_sd3_shapes" and stored["steps"] == 28 and stored["guidance_scale"] == 5.0
    assert stored["split"] == "calibration"
    assert json.loads(validate(_compose(["method=forecast_search"])).calibration) == stored["search"]
    with pytest.raises(ConfigError, match=r"^method=forecast_search: assets/forecast_search/tiny_sd3_shapes-28\.json "
                                          r"was calibrated at guidance_scale=5\.0, this run uses model\.guidance_scale=7\.0"):
        validate(_compose(["method=forecast_search", "model.guidance_scale=7.0"]))
    louder = ["method=forecast_search", "model.guidance_scale=7.0", "method.calibration.guidance_scale=5.0"]
    with pytest.raises(ConfigError, match=r"measured at guidance_scale=5\.0, and the run uses 7\.0: calibrate at this "
                                          r"guidance scale, or set reuse_calibration=true"):
        validate(_compose(louder))
    assert validate(_compose([*louder, "method.config.reuse_calibration=true"])).reuse_calibration
    fewer = ["method=forecast_search", "model.steps=20"]
    with pytest.raises(ConfigError, match=r"needs its segment costs measured .* model\.steps=20` once"):
        validate(_compose(fewer))
    renamed = [*fewer, "method.name=fs_arm", "method.calibration.of=forecast_search"]  # an ablation arm
    with pytest.raises(ConfigError, match=r"^method=fs_arm needs its segment costs measured .*: run `python "
                                          r"scripts/calibrate\.py method=forecast_search model=tiny_sd3_shapes "
                                          r"model\.steps=20` once"):
        validate(_compose(renamed))
    with pytest.raises(ConfigError, match=r"calibration was measured at 28 steps, this run has 20: calibrate at 20 "
                                          r"steps, or set reuse_calibration=True"):
        validate(_compose([*fewer, "method.calibration.steps=28"]))
    assert validate(_compose([*fewer, "method.calibration.steps=28", "method.config.reuse_calibration=true"]))
