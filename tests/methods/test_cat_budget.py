"""cat_budget: CAT with a budget schedule across the pruned steps and forecast module outputs.

Plain CAT bit for bit at its defaults, the full model at keep ratio 1, exact remove; the budget schedule
keeps the flat schedule's total; the value a module hands on for an unselected token is the first-order
extrapolation from that token's own last two computations, checked by hand on tiny random models; the
forecast's extra cache is one output buffer per module plus per-token times; compiled blocks never
recompile.
"""

import dataclasses

import pytest
import torch

import cat
from cat import testing
from cat.methods.cat_budget import CATBudgetConfig, schedule
from tests.adapters.compiled import assert_pruned_steps_are_one_graph
from tests.adapters.families import FAMILIES, INPUTS

PROMPTS = ["a red circle", "a blue square"]
STEPS = 10
FAMILY_NAMES = ("sd3", "pixart_sigma", "flux")

pytestmark = pytest.mark.usefixtures("one_thread")


def _generate(pipe, family, prompts=PROMPTS, steps=STEPS):
    spec = FAMILIES[family]
    kwargs = {"height": 32, "width": 32, "guidance_scale": 5.0 if spec.has_cfg else 1.0, **spec.pipeline_kwargs}
    if family.startswith("sd3"):
        kwargs["max_sequence_length"] = 8
    return pipe(prompts, num_inference_steps=steps, output_type="latent",
                generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], **kwargs).images


def _attrs(pipe):
    return {n: (set(vars(m)), getattr(m, "processor", None)) for n, m in pipe.transformer.named_modules()}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_defaults_are_cat_bit_for_bit_keep_one_is_the_full_model_and_remove_is_exact(family):
    pipe = FAMILIES[family].pipeline()
    base = _generate(pipe, family)
    before, hooked = _attrs(pipe), hasattr(pipe.transformer, "_diffusers_hook")
    plain = dict(warmup_steps=4, num_clusters=4)
    with cat.apply(pipe, cat.CATConfig(**plain)):
        cat_out = _generate(pipe, family)
    with cat.apply(pipe, CATBudgetConfig(**plain)):
        assert torch.equal(_generate(pipe, family), cat_out)
    everything = dict(schedule_slope=1.0, schedule_block=2, forecast=1.0, forecast_time="timestep")
    with cat.apply(pipe, CATBudgetConfig(keep_ratio=1.0, **plain, **everything)):
        assert torch.equal(_generate(pipe, family), base)
    with cat.apply(pipe, CATBudgetConfig(**plain, **everything)) as handle:
        forecast = _generate(pipe, family)
        assert handle.stats.tokens_per_step == CATBudgetConfig(**plain, **everything).offline_schedule(STEPS, 256)
    assert torch.isfinite(forecast).all() and not torch.equal(forecast, cat_out)
    assert torch.equal(_generate(pipe, family), base)
    assert _attrs(pipe) == before and hasattr(pipe.transformer, "_diffusers_hook") == hooked


# Modules whose output (before the gate) is forecast, per family; FLUX's single-stream attention output
# holds text rows first.
WATCHED = {
    "sd3": ("transformer_blocks.0.attn", "transformer_blocks.0.ff", "transformer_blocks.1.attn"),
    "pixart_sigma": ("transformer_blocks.0.attn1", "transformer_blocks.0.attn2", "transformer_blocks.1.ff"),
    "flux": ("transformer_blocks.0.attn", "single_transformer_blocks.0.attn"),
}


@pytest.mark.parametrize("family, time, damping, most", [
    ("sd3", "step", 1.0, 1.0), ("sd3", "timestep", 0.5, 2.5), ("pixart_sigma", "timestep", 1.0, 1.0),
    ("flux", "step", 0.7, 3.0),
])
def test_an_unselected_token_gets_the_extrapolation_from_its_own_last_two_computations(family, time, damping, most):
    """Each watched module's output is captured at every step. A token's computations are the two warm-up
    steps that fill the caches (t0-2, t0-1) and the pruned steps that select it; at every other pruned
    step its output must be o_last + rho (o_last - o_prev), rho = damping x min(most, (t - t_last) /
    (t_last - t_prev)), t the step index or the (unevenly spaced) timestep."""
    transformer = FAMILIES[family].transformer()
    cfg_pairs = FAMILIES[family].has_cfg
    inputs = INPUTS[family](2 if cfg_pairs else 1)
    steps, t0 = 12, 4
    sigmas = torch.linspace(1.0, 0.05, steps)
    timesteps = 1000 * 3.0 * sigmas / (1 + 2.0 * sigmas)  # a shift-3 schedule: uneven spacing
    config = CATBudgetConfig(keep_ratio=0.25, warmup_steps=t0, num_clusters=4, forecast=damping,
                               forecast_max=most, forecast_time=time)
    seen = {name: [] for name in WATCHED[family]}
    hooks = []
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        for name in WATCHED[family]:
            module = transformer.get_submodule(name)
            hooks.append(module.register_forward_hook(
                lambda m, a, out, name=name: seen[name].append((out[0] if isinstance(out, tuple) else out).clone())))
        handle.reset(cfg_pairs=cfg_pairs, num_steps=steps)
        for s in range(steps):
            call = dict(inputs)
            call["timestep"] = torch.full_like(inputs["timestep"], float(timesteps[s] / (1000 if family == "flux" else 1)))
            transformer(**call)
        for h in hooks:
            h.remove()
        records = handle.stats.steps
    n = 256
    clock = [float(s) for s in range(steps)] if time == "step" else [float(timesteps[s]) for s in range(steps)]
    if family == "flux" and time == "timestep":
        clock = [c / 1000 for c in clock]
    checked = 0
    for name, outs in seen.items():
        outs = [o[:, -n:].double() for o in outs]  # image rows [B, N, C]
        last = {i: (t0 - 1, outs[t0 - 1][:, i]) for i in range(n)}
        prev = {i: (t0 - 2, outs[t0 - 2][:, i]) for i in range(n)}
        for s in range(t0, steps):
            active = records[s].active[0]  # [N] tokens recomputed at s (one selection for the pair)
            for i in range(n):
                if active[i]:
                    continue
                (tl, ol), (tp, op) = last[i], prev[i]
                rho = damping * min(most, max(0.0, (clock[s] - clock[tl]) / (clock[tl] - clock[tp])))
                torch.testing.assert_close(outs[s][:, i], ol + rho * (ol - op), rtol=1e-5, atol=1e-5)
                checked += 1
            for i in active.nonzero().flatten().tolist():
                prev[i], last[i] = last[i], (s, outs[s][:, i])
    assert checked > 0.5 * len(seen) * n * (steps - t0)


def test_the_forecast_reaches_the_output_only_without_output_caching():
    """With CAT's output caching, unselected tokens' final outputs are the previous step's whatever their
    module outputs; the forecast turns it off (null), and it can be turned off without a forecast (copy)."""
    pipe = FAMILIES["sd3"].pipeline()
    plain = dict(warmup_steps=4, num_clusters=4)
    outs = {}
    for label, extra in {"cat": {}, "copy": dict(output_caching=False), "forecast": dict(forecast=1.0),
                         "forecast_cached": dict(forecast=1.0, output_caching=True)}.items():
        with cat.apply(pipe, CATBudgetConfig(**plain, **extra)) as handle:
            outs[label] = _generate(pipe, "sd3")
            last = handle.stats.steps[-1]
        assert last.phase == "pruned"
    assert not torch.equal(outs["copy"], outs["cat"]) and not torch.equal(outs["forecast"], outs["copy"])
    assert not torch.equal(outs["forecast"], outs["cat"])


def test_cache_bytes_count_one_more_output_buffer_per_module_and_the_times():
    pipe = FAMILIES["sd3"].pipeline()
    plain = dict(warmup_steps=4, num_clusters=4)
    with cat.apply(pipe, CATBudgetConfig(**plain)) as handle:
        _generate(pipe, "sd3")
        copy_bytes = handle.cache_bytes()
    with cat.apply(pipe, CATBudgetConfig(**plain, forecast=1.0)) as handle:
        _generate(pipe, "sd3")
        state = handle.runtime.last_state()
        outputs = sum(c.out.numel() * c.out.element_size() for c in state.caches.values() if c.out is not None)
        assert all((c.prev is None) == (c.out is None) for c in state.caches.values())
        b, p, n = 4, 2, 256  # two prompts with CFG, 16x16 tokens
        assert handle.cache_bytes() - copy_bytes == outputs + b * n * 4 + 2 * p * n * 4 + 4


@pytest.mark.parametrize("num_steps, warmup, ratio, slope, block", [
    (28, 8, 0.3, 0.5, 4), (28, 8, 0.3, 1.0, 4), (28, 8, 0.3, -0.7, 3), (28, 8, 0.1, 1.0, 4), (28, 8, 0.6, 1.0, 4),
    (28, 4, 0.9, 0.8, 5), (10, 4, 0.3, 0.5, 2), (50, 14, 0.2, 0.9, 4), (20, 6, 0.004, 1.0, 4), (13, 3, 0.5, 1.0, 1),
])
def test_the_budget_schedule_keeps_the_flat_total_in_few_levels(num_steps, warmup, ratio, slope, block):
    n = 256
    flat = cat.CATConfig(keep_ratio=ratio, warmup_steps=warmup).offline_schedule(num_steps, n)
    config = CATBudgetConfig(keep_ratio=ratio, warmup_steps=warmup, schedule_slope=slope, schedule_block=block)
    moving = config.offline_schedule(num_steps, n)
    assert len(moving) == num_steps and sum(moving) == sum(flat)
    assert moving[:warmup] == flat[:warmup]
    pruned = moving[warmup:]
    assert all(1 <= k <= n - 1 for k in pruned)
    blocks = -(-len(pruned) // block)
    assert len(set(pruned)) <= blocks + 1  # one level per block, plus one token more or less in the last
    if flat[warmup] == 1:  # one token a step: nothing to move
        assert pruned == flat[warmup:]
    elif slope > 0:
        assert pruned[0] > pruned[-1] and all(a >= b - 1 for a, b in zip(pruned, pruned[1:]))
    else:
        assert pruned[0] < pruned[-1]
    assert CATBudgetConfig(keep_ratio=ratio, warmup_steps=warmup).offline_schedule(num_steps, n) == flat


def test_schedule_shape_and_exact_total():
    assert schedule(20, 77, 256, 0.0, 4) == [77] * 20
    # 150 falling to 50 over 20 steps, averaged over blocks of 4
    assert schedule(20, 100, 256, 0.5, 4) == [142] * 4 + [121] * 4 + [100] * 4 + [79] * 4 + [58] * 4
    assert schedule(7, 77, 256, 0.5, 4) == [96] * 4 + [52, 52, 51]  # 539 = 7 x 77: one token less at the end
    assert schedule(1, 77, 256, 1.0, 4) == [77]


def _compiled(pipe, config, family="sd3"):
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounter()
    with cat.apply(pipe, config) as handle:
        eager = _generate(pipe, family)
        handle.compile(backend=backend)
        first = _generate(pipe, family)
        frames = backend.frame_count
        second = _generate(pipe, family)
        _generate(pipe, family, ["a green tree", "a big cat"])
        again = backend.frame_count
    return eager, first, second, frames, again


@pytest.mark.parametrize("slope", [0.0, 0.5])
def test_compiled_forecast_matches_eager_and_never_recompiles(slope):
    """Forecasting adds no graph (full, cache-filling and pruned steps, as CAT); a budget schedule adds
    one pruned-step graph per distinct budget; nothing compiles again in later generations."""
    pipe = testing.tiny_sd3_pipeline(num_layers=3)
    config = CATBudgetConfig(warmup_steps=4, num_clusters=4, forecast=1.0, schedule_slope=slope, schedule_block=2)
    levels = len(set(config.offline_schedule(STEPS, 256)[config.warmup_steps:]))
    eager, first, second, frames, again = _compiled(pipe, config)
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-4)
    assert torch.equal(first, second)
    assert again == frames
    assert frames <= 2 + levels


def test_pruned_forecast_step_is_one_graph_without_breaks():
    transformer, inputs = testing.tiny_sd3_transformer(num_layers=3), INPUTS["sd3"](2)
    config = CATBudgetConfig(warmup_steps=2, num_clusters=4, forecast=1.0)
    assert_pruned_steps_are_one_graph(transformer, inputs, config, 3, num_steps=6)


@pytest.mark.parametrize("field, value", [
    ("schedule_slope", 1.5), ("schedule_block", 0), ("forecast", -0.1), ("forecast_max", 0.0),
    ("forecast_time", "sigma"), ("output_caching", "yes"),
])
def test_bad_fields_are_named_with_their_range(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r} is invalid: {field} must be"):
        CATBudgetConfig(**{field: value})


def test_the_run_key_ignores_the_fields_an_off_feature_never_reads():
    assert set(CATBudgetConfig().key_ignores()) == {"schedule_block", "forecast_max", "forecast_time"}
    assert CATBudgetConfig(schedule_slope=0.5, forecast=1.0).key_ignores() == ()


def test_a_schedule_on_a_bare_transformer_needs_the_step_count():
    transformer, inputs = testing.tiny_sd3_transformer(), INPUTS["sd3"](2)
    config = CATBudgetConfig(warmup_steps=2, num_clusters=4, schedule_slope=0.5)
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=True)
        transformer(**inputs)
        with pytest.raises(ValueError, match="needs the number of steps"):
            transformer(**inputs)
    assert dataclasses.replace(config, schedule_slope=0.0).offline_schedule(6, 256)[2:] == [77] * 4
