"""FORA and ToCa on tiny random SD3 / SD3.5 / PixArt pipelines (CPU, no network)."""

from contextlib import contextmanager

import pytest
import torch

from cat import testing
from cat import apply
from cat.methods.fora import FORAConfig
from cat.methods.toca import ToCaConfig, fresh_count, full_steps, spatial_bonus

STEPS = 8
PROMPTS = ["a red circle", "a blue square"]
PIXART_CALL = {"use_resolution_binning": False, "max_sequence_length": 16, "clean_caption": False}

FAMILIES = {
    "sd3": (testing.tiny_sd3_pipeline, {}),
    "sd35_dual_attention": (lambda: testing.tiny_sd3_pipeline(qk_norm="rms_norm", dual_attention_layers=(0,)), {}),
    "pixart": (testing.tiny_pixart_pipeline, PIXART_CALL),
}
# Modules each method hooks, and which of them ToCa reuses whole (self-attention) on partial steps.
MODULES = {
    "sd3": ["0.attn", "0.ff", "0.ff_context", "1.attn", "1.ff"],  # the last block has no ff_context
    "sd35_dual_attention": ["0.attn", "0.attn2", "0.ff", "0.ff_context", "1.attn", "1.ff"],
    "pixart": ["0.attn1", "0.attn2", "0.ff", "1.attn1", "1.attn2", "1.ff"],
}
SELF_ATTENTION = {"attn", "attn1"}  # plus SD3.5's attn2 (PixArt's attn2 is cross-attention)

FORA_DEFAULT = FORAConfig()
TOCA_DEFAULT = ToCaConfig()


pytestmark = pytest.mark.usefixtures("one_thread")


class Family:
    def __init__(self, name):
        make, self.call_kwargs = FAMILIES[name]
        self.name = name
        self.pipe = make()
        self.modules = MODULES[name]
        self.base = self.generate()

    def generate(self, steps=STEPS, **kwargs):
        kwargs = {"height": 32, "width": 32, **self.call_kwargs, **kwargs}
        return self.pipe(PROMPTS, num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                         generator=torch.Generator().manual_seed(0), **kwargs).images

    def is_self_attention(self, name):
        attr = name.split(".")[1]
        return attr in SELF_ATTENTION or (attr == "attn2" and self.name != "pixart")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return Family(request.param)


def _module_state(pipe):
    return {name: (set(vars(m)), getattr(m, "processor", None)) for name, m in pipe.transformer.named_modules()}


@contextmanager
def count_runs(family):
    """Records (step, module, rows) each time a hooked module really computes: a torch pre-hook on the
    module's first Linear fires only when the module's own forward runs, not when a cache is returned."""
    transformer = family.pipe.transformer
    step = [-1]
    runs = []
    handles = [transformer.register_forward_pre_hook(lambda m, a: step.__setitem__(0, step[0] + 1))]
    for name in family.modules:
        i, attr = name.split(".")
        module = getattr(transformer.transformer_blocks[int(i)], attr)
        linear = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
        handles.append(linear.register_forward_pre_hook(
            lambda m, a, name=name: runs.append((step[0], name, a[0].shape[1]))))
    try:
        yield runs
    finally:
        for h in handles:
            h.remove()


def _steps_run(runs, name):
    return [s for s, n, _ in runs if n == name]


# --- do-nothing settings --------------------------------------------------------------------------


@pytest.mark.parametrize("config", [FORAConfig(interval=1), ToCaConfig(interval=1), ToCaConfig(fresh_ratio=1.0)],
                         ids=["fora_interval1", "toca_interval1", "toca_ratio1"])
def test_do_nothing_setting_is_bit_exact(family, config):
    with apply(family.pipe, config):
        assert torch.equal(family.generate(), family.base)


# --- accelerating settings ------------------------------------------------------------------------


def test_fora_runs_the_modules_on_the_authors_schedule_only(family):
    with count_runs(family) as full_runs:
        family.generate()
    with apply(family.pipe, FORA_DEFAULT) as handle, count_runs(family) as runs:
        out = family.generate()
        stats = handle.stats
    # Authors' rule, counting t = T-1-k down: compute at t == T-1 or t % 3 == 0 -> k = 0, 1, 4, 7 of 8.
    assert (stats.computed_steps, stats.reused_steps) == ((0, 1, 4, 7), (2, 3, 5, 6))
    for name in family.modules:
        assert _steps_run(full_runs, name) == list(range(STEPS)), name
        assert _steps_run(runs, name) == [0, 1, 4, 7], name
    assert len(runs) < len(full_runs)
    assert not torch.equal(out, family.base)
    assert torch.isfinite(out).all()


def test_toca_recomputes_fresh_tokens_only_between_refreshes(family):
    with count_runs(family) as full_runs:
        family.generate()
    with apply(family.pipe, TOCA_DEFAULT) as handle, count_runs(family) as runs:
        out = family.generate()
        stats = handle.stats
    # Refresh threshold round(3 / (0.8 + 0.4 s/8)) set at each full step s: 4 at s=0, 3 at s=4 and s=6.
    assert stats.full_steps == (0, 4, 6)
    assert stats.partial_steps == (1, 2, 3, 5, 7)
    num_tokens = 16 * 16
    for name in family.modules:
        if family.is_self_attention(name):
            assert _steps_run(runs, name) == [0, 4, 6], name  # reused whole on partial steps
            continue
        rows = {s: r for s, n, r in runs if n == name}
        fresh = stats.fresh_tokens[f"transformer_blocks.{name}"]
        total = stats.total_tokens[f"transformer_blocks.{name}"]
        assert len(fresh) == STEPS
        assert [fresh[s] for s in (0, 4, 6)] == [total] * 3
        assert {s: r for s, r in enumerate(fresh) if r} == rows, name  # what ran is what the stats say
    # The authors' ratio schedule, by hand: block 1 of 2 ff at step 1 of 8:
    # 0.3 * (1.9 - 1.8/8) * (1.6 - 1.2) * 1.6 = 0.3216 -> int(0.3216 * 256) = 82 tokens.
    assert stats.fresh_tokens["transformer_blocks.1.ff"][1] == 82
    assert fresh_count(TOCA_DEFAULT, num_tokens, 1, STEPS, 1, 2, "mlp") == 82
    if family.name == "pixart":  # cross-attention factor 0.6 in block 0: 0.3 * 1.675 * 1.6 * 0.6 -> 123
        assert stats.fresh_tokens["transformer_blocks.0.attn2"][1] == 123
    assert sum(r for *_, r in runs) < sum(r for *_, r in full_runs)
    assert 0 < stats.fresh_fraction < 1
    assert not torch.equal(out, family.base)
    assert torch.isfinite(out).all()


# --- exact removal and state resets ---------------------------------------------------------------


@pytest.mark.parametrize("config", [FORA_DEFAULT, TOCA_DEFAULT], ids=["fora", "toca"])
def test_remove_restores_exactly(family, config):
    pipe = family.pipe
    before = _module_state(pipe)
    handle = apply(pipe, config)
    assert not torch.equal(family.generate(), family.base)
    handle.remove()
    assert not handle.active
    assert torch.equal(family.generate(), family.base)
    assert _module_state(pipe) == before
    assert "encode_prompt" not in vars(pipe)
    assert not any(hasattr(m, "_diffusers_hook") for m in pipe.transformer.modules())


def test_applying_twice_is_refused(family):
    with apply(family.pipe, FORA_DEFAULT):
        with pytest.raises(RuntimeError, match="already applied"):
            apply(family.pipe, FORAConfig(interval=2))
    with apply(family.pipe, TOCA_DEFAULT):
        with pytest.raises(RuntimeError, match="already applied"):
            apply(family.pipe.transformer, TOCA_DEFAULT)


@pytest.mark.parametrize(
    "config",
    [FORA_DEFAULT] + [ToCaConfig(score=s) for s in ("straight", "norm", "similarity", "random")],
    ids=["fora", "toca_straight", "toca_norm", "toca_similarity", "toca_random"],
)
def test_two_consecutive_generations_are_identical(family, config):
    with apply(family.pipe, config):
        first = family.generate()
        assert torch.equal(family.generate(), first)
    assert not torch.equal(first, family.base)
    assert torch.isfinite(first).all()


# --- bare transformers ----------------------------------------------------------------------------


def test_bare_transformer_matches_the_pipeline(family):
    transformer = family.pipe.transformer
    # FORA: without a step count the schedule is k % interval == 0, the authors' one when
    # (T - 1) % interval == 0, as for 7 steps.
    with apply(family.pipe, FORA_DEFAULT):
        via_pipe = family.generate(steps=7)
    with apply(transformer, FORA_DEFAULT) as handle:
        assert torch.equal(family.generate(steps=7), via_pipe)
        assert torch.equal(family.generate(steps=7), via_pipe)  # a larger timestep starts a new generation
        assert handle.stats.computed_steps == (0, 3, 6)
    # ToCa needs the step count for its schedules.
    with apply(family.pipe, TOCA_DEFAULT):
        via_pipe = family.generate()
    with apply(transformer, TOCA_DEFAULT) as handle:
        with pytest.raises(RuntimeError, match="num_steps"):
            family.generate()
        handle.reset(num_steps=STEPS)
        assert torch.equal(family.generate(), via_pipe)
        assert torch.equal(family.generate(), via_pipe)
    assert torch.equal(family.generate(), family.base)


def test_skip_layer_guidance_call_is_left_alone():
    family = Family("sd35_dual_attention")
    slg = {"skip_guidance_layers": [0], "skip_layer_guidance_stop": 0.5}
    with apply(family.pipe, FORA_DEFAULT) as handle:
        out = family.generate(**slg)
        assert handle.stats.computed_steps == (0, 1, 4, 7)
        assert torch.isfinite(out).all()
    with apply(family.pipe, TOCA_DEFAULT) as handle:
        out = family.generate(**slg)
        assert handle.stats.full_steps == (0, 4, 6)
        assert torch.isfinite(out).all()


# --- configs and helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (FORAConfig, {"interval": 0}, "interval"),
        (FORAConfig, {"interval": 2.0}, "interval"),
        (FORAConfig, {"interval": True}, "interval"),
        (ToCaConfig, {"interval": 0}, "interval"),
        (ToCaConfig, {"fresh_ratio": 1.5}, "fresh_ratio"),
        (ToCaConfig, {"fresh_ratio": -0.1}, "fresh_ratio"),
        (ToCaConfig, {"fresh_ratio": "0.3"}, "fresh_ratio"),
        (ToCaConfig, {"ratio_schedule": "linear"}, "ratio_schedule"),
        (ToCaConfig, {"score": "attention"}, "score"),
        (ToCaConfig, {"soft_fresh_weight": -1}, "soft_fresh_weight"),
        (ToCaConfig, {"interval_step_weight": 1.0}, "interval_step_weight"),
        (ToCaConfig, {"refresh": "every"}, "refresh"),
        (ToCaConfig, {"spatial_bonus": 1}, "spatial_bonus"),
        (ToCaConfig, {"ratio_schedule": "FLUX"}, "ratio_schedule"),
    ],
)
def test_bad_fields_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}=.* is invalid: {field} must be"):
        cls(**kwargs)


def test_defaults_are_the_authors():
    assert FORAConfig().interval == 3
    assert ToCaConfig() == ToCaConfig(interval=3, fresh_ratio=0.30, ratio_schedule="toca", score="straight",
                                      soft_fresh_weight=0.25, interval_step_weight=0.2, warmup_steps=1,
                                      refresh="modulo", spatial_bonus=True)


@pytest.mark.parametrize("grid", [(8, 8), (6, 5)])
def test_spatial_bonus_rewards_the_best_token_of_each_cell(grid):
    h, w = grid
    score = torch.rand(3, h * w, generator=torch.Generator().manual_seed(0))
    expected = score.clone().view(3, h, w)
    for b in range(3):
        for i in range(0, h, 4):
            for j in range(0, w, 4):
                cell = expected[b, i:i + 4, j:j + 4]
                best = cell.max()
                r, c = divmod(int(cell.argmax()), cell.shape[1])
                expected[b, i + r, j + c] += 0.4 * best
    assert torch.allclose(spatial_bonus(score, grid), expected.view(3, h * w))


def test_constant_schedules_need_no_step_count():
    """With a constant ratio and refresh interval a bare transformer needs no step count."""
    family = Family("pixart")
    config = ToCaConfig(ratio_schedule="constant", interval_step_weight=0.0)
    with apply(family.pipe.transformer, config) as handle:
        out = family.generate()
        stats = handle.stats
    assert stats.full_steps == (0, 3, 6)
    assert set(stats.fresh_tokens["transformer_blocks.1.ff"][s] for s in stats.partial_steps) == {int(0.3 * 256)}
    assert torch.isfinite(out).all() and not torch.equal(out, family.base)


# --- the authors' FLUX setting on MMDiT: counter refresh, "flux" ratio schedule, no spatial bonus ------------

# flux-ToCa (cache_init.py, cal_type.py, force_scheduler.py, fresh_ratio_scheduler.py): steps 0-2 full, then a
# full step 4 steps after the last one; fresh ratio 0.1 x layer factor (1.5 - l/(L-1)) x 0.4 in double-stream
# blocks; no step factor, no module factor, no spatial bonus.
TOCA_FLUX = ToCaConfig(interval=4, fresh_ratio=0.1, ratio_schedule="flux", interval_step_weight=0.0, warmup_steps=3,
                       refresh="counter", spatial_bonus=False)


def test_counter_refresh_gives_the_authors_flux_full_steps():
    assert full_steps(TOCA_FLUX, 28) == (0, 1, 2, 6, 10, 14, 18, 22, 26)
    assert full_steps(TOCA_FLUX, 50) == (0, 1, 2) + tuple(range(6, 50, 4))  # the warm-up stays 3 steps
    assert full_steps(TOCA_FLUX, 20) == (0, 1, 2, 6, 10, 14, 18)
    # the counter ignores interval_step_weight (and the run key does too)
    assert full_steps(ToCaConfig(**{**vars(TOCA_FLUX), "interval_step_weight": 0.2}), 28) == full_steps(TOCA_FLUX, 28)
    assert TOCA_FLUX.key_ignores() == ("interval_step_weight",) and ToCaConfig().key_ignores() == ()
    # the modulo rule is today's: the default's full steps at 8 and 28 steps
    assert full_steps(TOCA_DEFAULT, 8) == (0, 4, 6)
    assert full_steps(TOCA_DEFAULT, 28) == (0, 4, 8, 9, 12, 15, 18, 21, 24, 27)


def test_flux_ratio_schedule_follows_the_formula():
    # int(clamp(0.1 * (1.5 - l / (L - 1)) * stream) * N), in float32; stream 0.4 joint, 1.6 otherwise
    assert fresh_count(TOCA_FLUX, 4096, 5, 28, 0, 24, "mlp", joint=True) == 245  # 0.06 x 4096 = 245.76
    assert fresh_count(TOCA_FLUX, 4096, 20, 28, 23, 24, "mlp", joint=True) == 81  # 0.02 x 4096 = 81.92
    assert fresh_count(TOCA_FLUX, 4096, 5, None, 12, 25, "mlp", joint=True) == 163  # 0.04 x 4096 = 163.84
    assert fresh_count(TOCA_FLUX, 256, 5, 28, 0, 28, "mlp", joint=False) == 61  # 0.24 x 256 = 61.44
    assert fresh_count(TOCA_FLUX, 256, 5, 28, 0, 28, "cross-attn", joint=False) == 61  # no module factor


def test_authors_flux_setting_on_tiny_sd3_at_28_steps():
    """Full steps 0,1,2,6,...,26; at every partial step each token-wise module recomputes the formula's count:
    block 0 of 2: 0.1 x 1.5 x 0.4 = 0.06, block 1: 0.1 x 0.5 x 0.4 = 0.02 of its tokens."""
    family = Family("sd3")
    with apply(family.pipe, TOCA_FLUX) as handle, count_runs(family) as runs:
        out = family.generate(steps=28)
        stats = handle.stats
    assert stats.full_steps == (0, 1, 2, 6, 10, 14, 18, 22, 26)
    expected = {"transformer_blocks.0.ff": (256, 15), "transformer_blocks.1.ff": (256, 5),
                "transformer_blocks.0.ff_context": (333, 19)}  # 77 + 256 text tokens: int(0.06 x 333) = 19
    assert set(stats.fresh_tokens) == set(expected)
    for name, (total, fresh) in expected.items():
        assert stats.total_tokens[name] == total
        assert [stats.fresh_tokens[name][s] for s in stats.partial_steps] == [fresh] * len(stats.partial_steps), name
    for name in ("0.attn", "1.attn"):  # joint attention: reused whole on partial steps
        assert _steps_run(runs, name) == list(stats.full_steps)
    assert torch.isfinite(out).all()


def test_the_spatial_bonus_switch_changes_the_selection_only():
    family = Family("pixart")
    with apply(family.pipe, ToCaConfig()):
        with_bonus = family.generate()
        assert all(h.spatial for h in _token_hooks(family.pipe))
    with apply(family.pipe, ToCaConfig(spatial_bonus=False)) as handle:
        without = family.generate()
        assert not any(h.spatial for h in _token_hooks(family.pipe))
        stats = handle.stats
    assert stats.full_steps == (0, 4, 6)  # the schedules are unchanged
    assert not torch.equal(with_bonus, without) and torch.isfinite(without).all()


def _token_hooks(pipe):
    from cat.methods.toca import _TokenHook

    return [h for m in pipe.transformer.modules() if (r := vars(m).get("_diffusers_hook"))
            for h in r.hooks.values() if isinstance(h, _TokenHook)]


def test_counter_and_flux_schedules_need_no_step_count():
    family = Family("sd3")
    with apply(family.pipe.transformer, TOCA_FLUX) as handle:
        out = family.generate()
        assert handle.stats.full_steps == (0, 1, 2, 6)
    assert torch.isfinite(out).all()
