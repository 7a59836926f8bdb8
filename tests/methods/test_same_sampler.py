"""Fewer steps and the step caches sample from what the full model samples from: the same initial noise, the
same first timestep and the same scheduler shift, through the harness's own batch call
(`experiments.run.generate.run_batch`). A method whose lead or lag came from another noise or sampler would
not be measuring what it claims; this rules it out on the tiny SD3 pipeline for every method."""

import pytest
import torch

import cat
from cat import testing
from experiments.prompts.sets import Prompt
from experiments.run.generate import run_batch

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
BATCH = [Prompt(0, "a red circle"), Prompt(1, "a blue square")]
KWARGS = {"guidance_scale": 5.0, "height": 32, "width": 32, "max_sequence_length": 8, "num_inference_steps": STEPS}


@pytest.fixture(scope="module")
def pipe():
    return testing.tiny_sd3_pipeline()


def sampled(pipe, config=None) -> dict:
    """The transformer's inputs at its first call, every timestep it was called at, and the shift used."""
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone()))

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        if config is None:
            run_batch(pipe, BATCH, 0, KWARGS)
        else:
            with cat.apply(pipe, config) as handle:
                run_batch(pipe, BATCH, 0, {**KWARGS, **handle.call_overrides(reference_steps=STEPS)})
    finally:
        hook.remove()
    return {"noise": calls[0][0], "timesteps": [float(t[0]) for _, t in calls],
            "shift": pipe.scheduler.config.shift, "sigmas": pipe.scheduler.sigmas.clone()}


@pytest.fixture(scope="module")
def full(pipe):
    return sampled(pipe)


def test_fewer_steps_samples_the_full_models_noise_and_schedule_at_its_own_length(pipe, full):
    fewer = sampled(pipe, cat.StepsConfig(num_steps=STEPS // 2))
    assert torch.equal(full["noise"], fewer["noise"])  # the same initial latents, bit for bit
    assert fewer["timesteps"][0] == full["timesteps"][0] and fewer["shift"] == full["shift"]
    assert len(fewer["timesteps"]) == STEPS // 2 and len(full["timesteps"]) == STEPS
    # the same scheduler (config, shift) set to the shorter length: nothing else about the sampler changes
    reference = type(pipe.scheduler).from_config(pipe.scheduler.config)
    reference.set_timesteps(STEPS // 2)
    assert torch.equal(fewer["sigmas"], reference.sigmas)


@pytest.mark.parametrize("name", sorted(set(cat.METHODS) - {"steps"}))  # every method that keeps the steps
def test_every_cache_samples_the_full_models_noise_timesteps_and_shift(pipe, full, name):
    _, accelerating = cat.METHODS[name].examples(STEPS)
    method = sampled(pipe, accelerating)
    assert torch.equal(full["noise"], method["noise"])
    assert method["timesteps"] == full["timesteps"] and method["shift"] == full["shift"]
    assert torch.equal(method["sigmas"], full["sigmas"])
