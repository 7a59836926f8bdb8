"""The library refuses what the harness refuses, for users who call `cat.apply` themselves: a `steps`
run above its reference step count, and a ratio that asks for less than one token."""

import dataclasses

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
