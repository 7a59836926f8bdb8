"""The library refuses what the harness refuses, for users who call `cat.apply` themselves: a `steps`
run above its reference step count, and a ratio that asks for less than one token."""

import dataclasses
import warnings

import pytest
import torch

import cat
from cat import testing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return testing.tiny_sd3_pipeline()


def _call(pipe, **kwargs):
    return pipe(["a red circle"], guidance_scale=5.0, height=32, width=32, output_type="latent",
                max_sequence_length=8, generator=[torch.Generator().manual_seed(0)], **kwargs).images


# --- steps: at most the reference's step count -----------------------------------------------------------


def test_call_overrides_check_the_reference_step_count(pipe):
    with cat.apply(pipe, cat.StepsConfig(num_steps=60)) as handle:
        with pytest.raises(ValueError, match=r"num_steps=60 is invalid: num_steps must be at most the reference "
                                             r"step count \(8\)"):
            handle.call_overrides(reference_steps=8)
        assert handle.call_overrides(reference_steps=60) == {"num_inference_steps": 60}
        with pytest.raises(ValueError, match="reference_steps=0 is invalid"):
            handle.call_overrides(reference_steps=0)
    with cat.apply(pipe, cat.CATConfig()) as handle:  # every method's step-count rule, as the harness's
        with pytest.raises(ValueError, match=r"warmup_steps=8 is invalid: warmup_steps must be smaller"):
            handle.call_overrides(reference_steps=8)
        assert handle.call_overrides(reference_steps=28) == {}


@pytest.mark.parametrize("num_steps, match", [
    (60, r"runs 8 steps; that is fewer than num_steps"),  # asked above the call's own step count
    (4, r"StepsConfig\(num_steps=4\) is applied, but this pipeline call runs 8 steps\. Call the pipeline with "
        r"\*\*handle\.call_overrides"),  # the overrides were forgotten: the method would change nothing
])
def test_a_pipeline_call_that_does_not_run_num_steps_is_refused(pipe, num_steps, match):
    with cat.apply(pipe, cat.StepsConfig(num_steps=num_steps)) as handle:
        with pytest.raises(ValueError, match=match):
            _call(pipe, num_inference_steps=8)
        with_overrides = _call(pipe, **handle.call_overrides(reference_steps=60))
    assert torch.equal(with_overrides, _call(pipe, num_inference_steps=num_steps))
    _call(pipe, num_inference_steps=8)  # removed: the check went with the handle


def test_steps_on_a_bare_transformer_patches_nothing():
    transformer = testing.tiny_sd3_transformer()
    before = dict(vars(transformer))
    with cat.apply(transformer, cat.StepsConfig(num_steps=4)) as handle:
        assert handle.call_overrides() == {"num_inference_steps": 4}
        assert not hasattr(transformer, "_diffusers_hook")
    assert vars(transformer) == before


# --- ratios: at least one token, checked where the token count is known -------------------------------------


@pytest.mark.parametrize("config, field", [
    (cat.CATConfig(keep_ratio=1e-9, warmup_steps=4, num_clusters=4), "keep_ratio"),
    (cat.CATConfig(keep_ratio=1e-9, warmup_steps=4, policy="random"), "keep_ratio"),
    (cat.CATFORAConfig(keep_ratio=1e-9, warmup_steps=4, num_clusters=4), "keep_ratio"),
    (cat.RASConfig(sample_ratio=1e-9, warmup_steps=3), "sample_ratio"),
], ids=["cat", "random", "cat_fora", "ras"])
def test_a_ratio_below_one_token_is_refused_at_the_first_transformer_call(pipe, config, field):
    """32x32 images are 256 image tokens: 1e-9 asks for none; 1/256 (one token) runs."""
    message = (rf"{field}=1e-09 is invalid: {field} must be large enough to .* at least one token.*256 image "
               r"tokens.*the smallest allowed value is just above 0\.5/256 = 0\.00195")
    with cat.apply(pipe, config):
        with pytest.raises(ValueError, match=message):
            _call(pipe, num_inference_steps=10)
    with cat.apply(pipe, dataclasses.replace(config, **{field: 1 / 256})) as handle:
        _call(pipe, num_inference_steps=10)
        assert min(r.num_recomputed for r in handle.stats.steps) <= 2


# --- the step count: every method's check_steps at the first transformer call of a generation ------------------


def _refusing_warmup(cls, steps: int):
    """`cls`'s accelerating example with a warm-up covering every step: a setting that cannot do anything."""
    fast = cls.examples(steps)[1]
    return dataclasses.replace(fast, warmup_steps=steps)


WARMED = [cls for cls in cat.METHODS.values() if cls.has_warmup]


@pytest.mark.parametrize("cls", WARMED, ids=[cls.name for cls in WARMED])
def test_a_warmup_covering_the_pipelines_steps_is_refused_at_the_first_call(pipe, cls):
    """Issue 34: `cat.apply(pipe, CATConfig(warmup_steps=8))` then a 6-step call ran the full model in silence; the
    step count is the scheduler's, so every method's `check_steps` runs at the generation's first call."""
    config = _refusing_warmup(cls, 4)
    with cat.apply(pipe, config):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.warmup_steps=4 is invalid: warmup_steps must be "
                                             r"smaller than the number of steps \(4\)"):
            _call(pipe, num_inference_steps=4)
        if cls is not cat.MagCacheConfig:  # (whose ratios hold 4 steps)
            _call(pipe, num_inference_steps=5)  # the same handle at a count it acts on: each generation is checked


def test_the_issues_defaults_are_refused_at_six_steps(pipe):
    for config in (cat.CATConfig(warmup_steps=8), cat.CATFORAConfig(), cat.CATBudgetConfig()):
        with cat.apply(pipe, config):
            with pytest.raises(ValueError, match=r"warmup_steps=8 is invalid: .*smaller than the number of steps \(6\)"):
                _call(pipe, num_inference_steps=6)


def test_a_bare_transformer_is_checked_once_it_says_its_step_count():
    from cat.families import family_for

    transformer = testing.tiny_sd3_transformer()
    inputs = family_for(transformer).example_inputs(transformer.config, 2, 32, 32, 7, torch.Generator().manual_seed(0))
    with torch.no_grad(), cat.apply(transformer, cat.CATConfig(warmup_steps=3, num_clusters=4)) as handle:
        handle.reset(cfg_pairs=True)
        transformer(**inputs)  # no step count said: nothing to check against
        handle.reset(num_steps=3)
        with pytest.raises(ValueError, match=r"warmup_steps=3 is invalid: .*smaller than the number of steps \(3\)"):
            transformer(**inputs)


def test_magcache_ratios_of_another_step_count_are_refused_unless_stretched(pipe):
    ratios = tuple(1.0 - 0.02 * i for i in range(28))
    with cat.apply(pipe, cat.MagCacheConfig(mag_ratios=ratios)):
        with pytest.raises(ValueError, match=r"MagCacheConfig\.mag_ratios holds 28 ratios \(a calibration at 28 steps\) "
                                             r"and this schedule has 6 steps: calibrate at 6 steps, or set "
                                             r"MagCacheConfig\.stretch_ratios=True"):
            _call(pipe, num_inference_steps=6)
    with cat.apply(pipe, cat.MagCacheConfig(mag_ratios=ratios, stretch_ratios=True)) as handle:
        _call(pipe, num_inference_steps=6)
        assert handle.stats.transformer_calls == 6
    with pytest.raises(ValueError, match="stretch_ratios"):
        cat.MagCacheConfig(mag_ratios=ratios).check_steps(6)  # the harness's check, before a model loads


# --- a bare transformer whose CFG layout is unknown -------------------------------------------------------------


def test_a_bare_transformer_with_unknown_cfg_pairs_warns_once():
    from cat.families import family_for

    transformer = testing.tiny_sd3_transformer()
    inputs = family_for(transformer).example_inputs(transformer.config, 2, 32, 32, 7, torch.Generator().manual_seed(0))
    config = cat.CATConfig(warmup_steps=2, num_clusters=4)
    with torch.no_grad(), cat.apply(transformer, config):
        with pytest.warns(UserWarning, match=r"bare transformer: whether its batch holds classifier-free-guidance "
                                             r"pairs .* handle\.reset\(cfg_pairs=True\)") as caught:
            transformer(**inputs)
            transformer(**inputs)
        assert len([w for w in caught if "classifier-free" in str(w.message)]) == 1
    with torch.no_grad(), cat.apply(transformer, config) as handle, warnings.catch_warnings():
        warnings.simplefilter("error")
        handle.reset(cfg_pairs=True)
        transformer(**inputs)


def test_every_registered_method_config_is_exported_under_its_class_name():
    """`cat.CATBudgetConfig` is named by the README and by cat.apply's own error."""
    for cls in cat.METHODS.values():
        assert getattr(cat, cls.__name__) is cls and cls.__name__ in cat.__all__
