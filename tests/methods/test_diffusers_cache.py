"""TaylorSeer, First-Block Cache and MagCache (diffusers' hooks) on tiny random SD3 / PixArt pipelines (CPU)."""

import pytest
import torch

from cat import testing
from cat import METHODS, apply
from cat.methods.fbcache import FBCacheConfig
from cat.methods.magcache import MagCacheConfig, calibrate_magcache
from cat.methods.taylorseer import TaylorSeerConfig

from ..adapters.families import INPUTS

STEPS = 8
PROMPTS = ["a red circle", "a blue square"]
PIXART_CALL = {"use_resolution_binning": False, "max_sequence_length": 16, "clean_caption": False}
FAMILIES = {"sd3": (testing.tiny_sd3_pipeline, {}), "pixart": (testing.tiny_pixart_pipeline, PIXART_CALL)}
BLOCKS = ["transformer_blocks.0", "transformer_blocks.1"]
# Every module TaylorSeer must hook: diffusers' default patterns would miss PixArt's attn1/attn2 and all ff's.
TAYLORSEER_MODULES = {
    "sd3": [f"transformer_blocks.{m}" for m in ("0.attn", "0.ff", "0.ff_context", "1.attn", "1.ff")],
    "pixart": [f"transformer_blocks.{i}.{m}" for i in (0, 1) for m in ("attn1", "attn2", "ff")],
}
# diffusers' TaylorSeer schedule for 8 steps, warm-up 3, interval 5: full at steps 0, 1, 2, 4; forecast 3, 5, 6, 7.
TAYLORSEER_FULL_STEPS = 4
HOOKS = {  # hook names per targeted module
    "taylorseer": lambda fam: {name: {"taylorseer_cache"} for name in TAYLORSEER_MODULES[fam]},
    "fbcache": lambda fam: {BLOCKS[0]: {"cat_fbc_head_block_hook"}, BLOCKS[1]: {"cat_fbc_block_hook"}},
    "magcache": lambda fam: {"": set(), BLOCKS[0]: {"mag_cache_leader_block_hook"},
                             BLOCKS[1]: {"mag_cache_block_hook"}},
}


pytestmark = pytest.mark.usefixtures("one_thread")


class Family:
    def __init__(self, name):
        make, self.call_kwargs = FAMILIES[name]
        self.name = name
        self.pipe = make()
        self.base = self.generate()
        self.state = module_state(self.pipe.transformer)
        self.ratios = calibrate_magcache(self.pipe, PROMPTS, STEPS, guidance_scale=5.0, height=32, width=32,
                                         **self.call_kwargs)

    def generate(self):
        return self.pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=5.0, height=32, width=32,
                         output_type="latent", generator=torch.Generator().manual_seed(0), **self.call_kwargs).images

    def accelerating(self, method):
        return {"taylorseer": TaylorSeerConfig(), "fbcache": FBCacheConfig(threshold=0.3),
                "magcache": MagCacheConfig(mag_ratios=self.ratios)}[method]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return Family(request.param)


def module_state(transformer):
    return {name: (set(vars(m)), getattr(m, "processor", None)) for name, m in transformer.named_modules()}


def hooks_by_module(transformer):
    return {name: set(vars(m)["_diffusers_hook"].hooks) for name, m in transformer.named_modules()
            if "_diffusers_hook" in vars(m)}


class ComputeCounter:
    """Counts real computations of modules: a torch forward hook on the first Linear inside each module fires only
    when the module's own forward runs, not when a cache hook returns a forecast or passes its inputs through."""

    def __init__(self, transformer, names):
        self.counts = dict.fromkeys(names, 0)
        self.handles = []
        for name in names:
            leaf = next(m for m in transformer.get_submodule(name).modules() if isinstance(m, torch.nn.Linear))
            self.handles.append(leaf.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] += 1
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_methods_are_registered():
    assert METHODS["taylorseer"] is TaylorSeerConfig
    assert METHODS["fbcache"] is FBCacheConfig
    assert METHODS["magcache"] is MagCacheConfig


def test_calibration_gives_one_ratio_per_step_and_leaves_nothing_behind(family):
    assert len(family.ratios) == STEPS and family.ratios[0] == 1.0
    assert all(0.2 < r < 5 for r in family.ratios)
    assert module_state(family.pipe.transformer) == family.state
    assert torch.equal(family.generate(), family.base)


@pytest.mark.parametrize("method", ["taylorseer", "fbcache", "magcache"])
def test_accelerating_setting_skips_work_stays_close_and_removes_exactly(family, method):
    pipe, transformer = family.pipe, family.pipe.transformer
    targets = TAYLORSEER_MODULES[family.name] if method == "taylorseer" else BLOCKS
    counter = ComputeCounter(transformer, targets)
    try:
        assert torch.equal(family.generate(), family.base)
        assert counter.counts == dict.fromkeys(targets, STEPS)  # the counters see every unpatched computation
        counter.counts = dict.fromkeys(targets, 0)

        handle = apply(pipe, family.accelerating(method))
        assert hooks_by_module(transformer) == HOOKS[method](family.name)
        out = family.generate()
        stats = handle.stats
        counts, counter.counts = counter.counts, dict.fromkeys(targets, 0)
        again = family.generate()
        handle.remove()
        after = family.generate()
    finally:
        counter.remove()

    assert stats.transformer_calls == STEPS
    if method == "taylorseer":
        assert counts == dict.fromkeys(targets, TAYLORSEER_FULL_STEPS)
        assert stats.modules_computed == TAYLORSEER_FULL_STEPS * len(targets)
        assert stats.modules_forecast == (STEPS - TAYLORSEER_FULL_STEPS) * len(targets)
    else:
        skipped = len(stats.skipped_calls)
        assert 0 < skipped < STEPS
        if method == "fbcache":  # block 0 always runs; the others only on the non-skipped calls
            assert counts == {BLOCKS[0]: STEPS, BLOCKS[1]: STEPS - skipped}
            assert stats.blocks_skipped == skipped
        else:  # MagCache skips the whole block stack
            assert counts == dict.fromkeys(BLOCKS, STEPS - skipped)
            assert stats.blocks_skipped == 2 * skipped
        assert stats.blocks_computed == sum(counts.values())

    assert not torch.equal(out, family.base)
    assert torch.isfinite(out).all()
    assert ((out - family.base).norm() / family.base.norm()).item() < 0.1
    assert torch.equal(again, out)  # the cache state restarts at every generation
    assert torch.equal(after, family.base)
    assert module_state(transformer) == family.state
    assert hooks_by_module(transformer) == {}
    assert "encode_prompt" not in vars(pipe)


@pytest.mark.parametrize("config", [
    TaylorSeerConfig(cache_interval=1),
    TaylorSeerConfig(warmup_steps=STEPS - 1, cache_interval=1),
    FBCacheConfig(threshold=0),
    MagCacheConfig(threshold=0, mag_ratios=(1.0,) * STEPS),  # all-1.0 ratios: diffusers' `<=` alone would skip
    MagCacheConfig(max_skip_steps=0, mag_ratios=(1.0,) * STEPS),
], ids=lambda c: repr(c).split("(")[0] + "-" + repr(c).split("(")[1][:24])
def test_do_nothing_setting_is_bit_exact(family, config):
    with apply(family.pipe, config) as handle:
        assert torch.equal(family.generate(), family.base)
        stats = handle.stats
    assert stats.transformer_calls == STEPS
    assert getattr(stats, "modules_forecast", 0) == 0 and getattr(stats, "blocks_skipped", 0) == 0
    assert module_state(family.pipe.transformer) == family.state


@pytest.mark.parametrize("name", ["sd3", "pixart_sigma"])
def test_bare_transformer_restarts_when_the_timestep_goes_up(name):
    transformer = (testing.tiny_sd3_transformer if name == "sd3" else testing.tiny_pixart_transformer)()
    inputs = INPUTS[name](2)

    def run():
        outputs = []
        with torch.no_grad():
            for t in (900.0, 750.0, 600.0, 450.0, 300.0, 150.0):
                inputs["timestep"] = torch.full((2,), t)
                outputs.append(transformer(**inputs)[0])
        return torch.stack(outputs)

    base, state = run(), module_state(transformer)
    ratios = (1.0, 0.99, 1.0, 1.01, 0.98, 0.97)
    for config in (TaylorSeerConfig(), FBCacheConfig(threshold=0.5), MagCacheConfig(mag_ratios=ratios)):
        with apply(transformer, config) as handle:
            first, stats = run(), handle.stats
            assert torch.equal(run(), first) and handle.stats == stats
        assert not torch.equal(first, base)
        assert torch.equal(run(), base) and module_state(transformer) == state


def test_magcache_forced_steps_are_computed_and_reset_the_accumulated_error(family):
    """A forced step is computed even where the error would allow a skip, and the error restarts there, as at
    the authors' FLUX step 11 of 28 (`MagCache4FLUX/magcache_flux.py`, `magcache_forward`)."""
    ratios = tuple(1.0 - 0.01 * i for i in range(STEPS))
    config = MagCacheConfig(threshold=1.0, mag_ratios=ratios)  # retention: int(0.1 x 8 + 0.5) = 1 step
    with apply(family.pipe, config) as handle:
        family.generate()
        free = handle.stats.skipped_calls
    assert free == [1, 2, 3, 4, 5, 7]  # at most 5 consecutive skips, then step 6 computes
    with apply(family.pipe, MagCacheConfig(threshold=1.0, mag_ratios=ratios, forced_steps=(2,))) as handle:
        family.generate()
        stats = handle.stats
    assert stats.skipped_calls == [1, 3, 4, 5, 6, 7]  # step 2 computed, the count of skips restarts after it
    assert [r.phase for r in stats.steps] == ["full", "skipped", "full"] + ["skipped"] * 5
    with apply(family.pipe, MagCacheConfig(threshold=1.0, mag_ratios=ratios, forced_steps=[2, 6])) as handle:
        family.generate()
        assert handle.stats.skipped_calls == [1, 3, 4, 5, 7]


def test_magcache_without_ratios_asks_for_calibration_and_leaves_nothing_patched():
    transformer = testing.tiny_sd3_transformer()
    state = module_state(transformer)
    with pytest.raises(ValueError, match="MagCacheConfig.mag_ratios=None.*calibrate_magcache"):
        apply(transformer, MagCacheConfig())
    assert module_state(transformer) == state


def test_applying_the_same_method_twice_is_refused():
    transformer = testing.tiny_pixart_transformer()
    state = module_state(transformer)
    with apply(transformer, TaylorSeerConfig()):
        with pytest.raises(RuntimeError, match=r"'taylorseer' \(TaylorSeerConfig\) is already applied"):
            apply(transformer, TaylorSeerConfig(cache_interval=3))
    assert module_state(transformer) == state


@pytest.mark.parametrize("cls, kwargs, field", [
    (TaylorSeerConfig, {"cache_interval": 0}, "cache_interval"),
    (TaylorSeerConfig, {"cache_interval": 2.0}, "cache_interval"),
    (TaylorSeerConfig, {"max_order": -1}, "max_order"),
    (TaylorSeerConfig, {"warmup_steps": 0}, "warmup_steps"),
    (TaylorSeerConfig, {"disable_cache_after_step": 1}, "disable_cache_after_step"),
    (TaylorSeerConfig, {"factors_dtype": "float64"}, "factors_dtype"),
    (TaylorSeerConfig, {"cache_modules": ["transformer_blocks.*.(attn"]}, "cache_modules"),
    (FBCacheConfig, {"threshold": -0.1}, "threshold"),
    (FBCacheConfig, {"threshold": True}, "threshold"),
    (FBCacheConfig, {"threshold": float("nan")}, "threshold"),
    (MagCacheConfig, {"threshold": -1}, "threshold"),
    (MagCacheConfig, {"max_skip_steps": -1}, "max_skip_steps"),
    (MagCacheConfig, {"retention_ratio": 1.5}, "retention_ratio"),
    (MagCacheConfig, {"mag_ratios": [1.0]}, "mag_ratios"),
    (MagCacheConfig, {"mag_ratios": [1.0, 0.0]}, "mag_ratios"),
    (MagCacheConfig, {"mag_ratios": "1.0, 0.9"}, "mag_ratios"),
    (MagCacheConfig, {"forced_steps": [-1]}, "forced_steps"),
    (MagCacheConfig, {"forced_steps": 11}, "forced_steps"),
    (MagCacheConfig, {"warmup_steps": 0}, "warmup_steps"),
    (FBCacheConfig, {"warmup_steps": 0}, "warmup_steps"),
])
def test_invalid_fields_raise_naming_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{field}=.* is invalid: {field} must be "):
        cls(**kwargs)


def test_step_dependent_checks_and_normalised_fields():
    with pytest.raises(ValueError, match=r"TaylorSeerConfig\.warmup_steps=8 is invalid"):
        TaylorSeerConfig(warmup_steps=8).check_steps(8)
    TaylorSeerConfig().check_steps(8)
    with pytest.raises(ValueError, match=r"MagCacheConfig\.retention_ratio=1 is invalid"):
        MagCacheConfig(retention_ratio=1).check_steps(8)
    MagCacheConfig().check_steps(8)
    assert MagCacheConfig(mag_ratios=[1, 0.5]).mag_ratios == (1.0, 0.5)
    assert TaylorSeerConfig(cache_modules=["a", "b"]).cache_modules == ("a", "b")
    hash(MagCacheConfig(mag_ratios=[1, 0.5]))
