"""One method interface: every method in cat.METHODS has a conf file, validates before any model loads,
is bit-exact at its do-nothing setting, changes the output at its default, and `remove()` restores the
model exactly, on tiny SD3 and PixArt with CFG and a batch of two prompts."""

import dataclasses
from pathlib import Path

import pytest
import torch

import cat
from cat import testing

from .tiny import CALL, PROMPTS, STEPS, tiny_family

ROOT = Path(__file__).resolve().parents[2]
# Each method's own example settings for this schedule: one that changes nothing, one that accelerates.
EXAMPLES = {name: cls.examples(STEPS) for name, cls in cat.METHODS.items()}
DO_NOTHING = {name: pair[0] for name, pair in EXAMPLES.items()}
ACCELERATING = {name: pair[1] for name, pair in EXAMPLES.items()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(CALL))
def family(request):
    pipe, generate = tiny_family(request.param)
    return pipe, generate, generate()


@pytest.mark.parametrize("name", sorted(cat.METHODS))
def test_every_method_has_a_config_class_a_conf_file_and_both_settings(name):
    cls = cat.METHODS[name]
    assert cls.name == name and dataclasses.is_dataclass(cls) and cls.handle is not None
    assert (ROOT / "conf" / "method" / f"{name}.yaml").exists(), name
    nothing, fast = EXAMPLES[name]
    assert type(nothing) is cls and type(fast) is cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(fast, "name_", 1)


def _attrs(pipe):
    return {n: (dict(vars(m)), getattr(m, "processor", None)) for n, m in pipe.transformer.named_modules()}


@pytest.mark.parametrize("name", sorted(cat.METHODS))
def test_do_nothing_is_bit_exact_and_remove_restores_exactly(family, name):
    pipe, generate, base = family
    keys = {n: set(a) for n, (a, _) in _attrs(pipe).items()}
    with cat.apply(pipe, DO_NOTHING[name]) as handle:
        assert torch.equal(generate(handle.call_overrides()), base), name
    with cat.apply(pipe, ACCELERATING[name]) as handle:
        fast = generate(handle.call_overrides())
    assert torch.isfinite(fast).all() and not torch.equal(fast, base), name
    assert torch.equal(generate(), base), name
    after = _attrs(pipe)
    assert {n: set(a) for n, (a, _) in after.items()} == keys, name
    assert not hasattr(pipe.transformer, "_diffusers_hook") and "encode_prompt" not in vars(pipe)


@pytest.mark.parametrize("name", sorted(cat.METHODS))
def test_what_a_config_tells_the_harness_is_consistent(family, name):
    """The fields the run key ignores and the step-dependent defaults are fields of the config; the offline
    schedule (where the method has one) is what the method reports it did, step by step."""
    pipe, generate, _ = family
    cls, config = cat.METHODS[name], ACCELERATING[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(config.key_ignores()) <= fields
    assert set(cls.for_steps(STEPS)) <= fields and isinstance(cls(**cls.for_steps(STEPS)), cls)
    schedule = config.offline_schedule(STEPS, 256)
    if schedule is None:
        return
    assert all(isinstance(t, int) and 0 <= t <= 256 for t in schedule)
    with cat.apply(pipe, config) as handle:
        generate(handle.call_overrides())
        reported = handle.stats.tokens_per_step
    assert len(reported) == len(schedule)
    assert all(r is None or r == t for r, t in zip(reported, schedule)), (reported, schedule)


@pytest.mark.parametrize("name, field, value", [
    ("cat", "keep_ratio", 0.0), ("cat_fora", "reuse_interval", 0), ("ras", "sample_ratio", 1.5),
    ("ras", "metric", "mean"), ("steps", "num_steps", 0), ("fora", "interval", 0), ("toca", "fresh_ratio", -0.1),
    ("taylorseer", "cache_interval", 0), ("fbcache", "threshold", -1.0), ("magcache", "max_skip_steps", -1),
    ("dbcache", "fn_blocks", 0), ("dbcache", "taylorseer_order", 5), ("teacache", "coefficients", "0.1"),
    ("pab", "spatial_range", 0), ("pab", "cross_range", 0), ("fastercache", "uncond_interval", 0),
])
def test_bad_fields_are_named_with_their_range(name, field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r} is invalid: {field} must be"):
        cat.METHODS[name](**{field: value})


def test_apply_dispatches_on_the_config_type_and_refuses_strangers():
    pipe = testing.tiny_sd3_pipeline()
    for name in ("cat", "fora", "steps"):
        with cat.apply(pipe, ACCELERATING[name]) as handle:
            assert isinstance(handle, cat.MethodHandle) and handle.config is ACCELERATING[name]
    with pytest.raises(TypeError, match="method config"):
        cat.apply(pipe, {"keep_ratio": 0.3})
    with cat.apply(pipe) as handle:  # CAT with its defaults, as before
        assert isinstance(handle.config, cat.CATConfig)


def test_realised_macs_of_cat_match_the_meta_device_count():
    """The executed-MACs counter (run with the real tensors) agrees with the meta-device count of CAT's schedule."""
    from experiments.run.macs import realised_transformer_macs, report_from_config

    pipe = testing.tiny_sd3_pipeline()
    config = cat.CATConfig(keep_ratio=0.3, warmup_steps=4, num_clusters=4)
    call = lambda: pipe(PROMPTS[:1], num_inference_steps=STEPS, guidance_scale=5.0, height=32, width=32,  # noqa: E731
                        output_type="latent", max_sequence_length=8)
    full = realised_transformer_macs(pipe, call)
    with cat.apply(pipe, config):
        pruned = realised_transformer_macs(pipe, call)
    tcfg = {k: v for k, v in dict(pipe.transformer.config).items() if not k.startswith("_")}
    meta = report_from_config("SD3Transformer2DModel", tcfg, height=32, width=32, text_tokens=85, steps=STEPS,
                              guidance=True, method=config, vae_scale=1)
    assert full == pytest.approx(meta.transformer_macs_full, rel=1e-3)
    assert pruned == pytest.approx(meta.transformer_macs, rel=2e-2)
