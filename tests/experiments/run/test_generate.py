"""The pipeline call the harness makes: it owns every argument it passes or records (none may come from
`model.call_kwargs`), and its progress is counted in denoising steps."""

import inspect
from pathlib import Path

import pytest
from diffusers import StableDiffusion3Pipeline
from hydra import compose, initialize_config_dir

from cat import testing
from experiments.base.config_files import ConfigError
from experiments.lifecycle import resolvers  # noqa: F401
from experiments.prompts.sets import Prompt
from experiments.run import generate as gen
from experiments.tasks.validation import validate

ROOT = Path(__file__).resolve().parents[3]


def cfg_of(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


class Recording:
    """A pipeline with SD3's call signature that records the arguments it is called with."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, prompt, **kwargs):
        self.kwargs = {"prompt": prompt, **kwargs}
        return type("Out", (), {"images": []})()


Recording.__call__.__signature__ = inspect.signature(StableDiffusion3Pipeline.__call__)


def test_every_argument_the_harness_passes_is_one_call_kwargs_may_not_set():
    """The refused keys are derived from what the harness passes, not kept as a second list that can drift."""
    pipe, own = Recording(), {"max_sequence_length": 8}
    kwargs = {**{name: 1 for name in gen.FROM_MODEL}, **own}
    gen.run_batch(pipe, [Prompt(0, "a red circle")], 0, kwargs, progress=lambda: None)
    assert set(pipe.kwargs) - set(own) <= set(gen.owned_arguments())
    for name in set(pipe.kwargs) - set(own):
        with pytest.raises(ConfigError, match=rf"model.call_kwargs.{name} is not allowed: the harness passes {name}"):
            gen.check_call_kwargs({"call_kwargs": {name: None}})
    gen.check_call_kwargs({"call_kwargs": own})
    with pytest.raises(ValueError, match=r"pipeline call arguments the harness sets itself: output_type "):
        gen.run_batch(pipe, [Prompt(0, "a red circle")], 0, {**kwargs, "output_type": "latent"})


@pytest.mark.parametrize("key, value, source", [
    ("num_inference_steps", 3, "from model.steps: set that instead"),
    ("guidance_scale", 1.0, "from model.guidance_scale: set that instead"),
    ("height", 64, "from model.height: set that instead"),
    ("latents", "null", "from seed"),
    ("output_type", "latent", "fixed, the same in every run"),
    ("prompt_embeds", "null", "fixed, the same in every run"),
])
def test_a_call_kwarg_the_harness_sets_is_refused_before_any_model_loads(key, value, source):
    """Issue 34: `+model.call_kwargs.num_inference_steps=3` ran 3 steps while the folder, metrics.json and the tables
    said 6."""
    with pytest.raises(ConfigError, match=rf"^model.call_kwargs.{key} is not allowed: the harness passes {key} itself "
                                          rf"\({source}\)"):
        validate(cfg_of("debug=tiny", f"+model.call_kwargs.{key}={value}"))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("make, own", [
    (testing.tiny_sd3_pipeline, {"max_sequence_length": 8}),
    (testing.tiny_pixart_pipeline, {"max_sequence_length": 16, "use_resolution_binning": False, "clean_caption": False}),
], ids=["sd3", "pixart"])  # PixArt's pipelines have the older step callback
def test_progress_is_counted_in_denoising_steps(tmp_path, monkeypatch, make, own):
    """The bar counted batches ("0/1" for two minutes on one batch); now it moves at every step."""
    bars = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def set_postfix_str(self, text):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(gen, "tqdm", Bar)
    prompts = [Prompt(0, "a red circle"), Prompt(1, "a blue square")]
    kwargs = {"num_inference_steps": 3, "guidance_scale": 5.0, "height": 32, "width": 32, **own}
    gen.generate(make(), gen.batches(prompts, 1), tmp_path, 0, kwargs)
    assert [(b.total, b.n) for b in bars] == [(6, 6)]  # 2 batches x 3 steps
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00000.png", "00001.png"]
