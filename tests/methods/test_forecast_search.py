"""The budgeted forecasting cache (`cat.methods.forecast_search`) on tiny SD3, SD3.5 (dual attention) and
PixArt transformers and pipelines: its forecasts against hand computations from the recorded full steps, its
corrected tokens against a full computation of those tokens, the cluster correction against its formula, its
searched schedule within the MACs budget as the MAC counter counts it, fixed shapes (one compiled graph per
kind of step, no host read in forecast or corrected steps, caches updated in place), and its checks of the
calibration (settings, guidance scale, step count)."""

import copy
import dataclasses
import json
import math
import warnings

import pytest
import torch
from numpy.polynomial import hermite as H

import cat
from cat import testing
from cat.families import STEP_CACHED, family_for
from cat.methods.forecast_search import ForecastSearchConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MAKERS = {
    "sd3": lambda: testing.tiny_sd3_transformer(num_layers=3),
    "sd35_dual_attention": lambda: testing.tiny_sd3_transformer(qk_norm="rms_norm", dual_attention_layers=(0,)),
    "pixart": testing.tiny_pixart_transformer,
}
BATCH, LATENT, TEXT = 2, 16, 7  # one CFG pair, 8 x 8 = 64 image tokens
TOKENS = 64


@pytest.fixture(scope="module", params=list(MAKERS))
def transformer(request):
    return MAKERS[request.param]()


def step_inputs(transformer, steps):
    inputs = family_for(transformer).example_inputs(transformer.config, BATCH, LATENT, LATENT, TEXT,
                                                    torch.Generator().manual_seed(0))
    noise = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(1))
    return [{**inputs, "hidden_states": inputs["hidden_states"] + 0.3 * s * noise,
             "timestep": torch.full((BATCH,), 900.0 - 80 * s)} for s in range(steps)]


def run(transformer, config, steps):
    """`steps` calls under `config`: the stats and, per step, every wrapped module's input and output and the
    state's chosen tokens and clusters."""
    record = [dict() for _ in range(steps)]
    step = [0]
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        hooks = []
        for wrapper in handle.modules:
            hooks.append(wrapper.register_forward_pre_hook(
                lambda m, a, k, name=wrapper.name: record[step[0]].__setitem__(
                    ("in", name), (a[0] if a else k["hidden_states"]).clone()), with_kwargs=True))
            hooks.append(wrapper.register_forward_hook(
                lambda m, a, out, name=wrapper.name: record[step[0]].__setitem__(("out", name), copy.deepcopy(out))))
        handle.reset(cfg_pairs=True, num_steps=steps)
        for s, call in enumerate(step_inputs(transformer, steps)):
            step[0] = s
            transformer(**call)
            state = handle.state
            record[s]["index"] = None if state.index is None else state.index.clone()
            record[s]["labels"] = None if state.labels is None else state.labels.clone()
        for h in hooks:
            h.remove()
        return handle.stats, record


def tensors(out):
    return list(out) if isinstance(out, tuple) else [out]


def names(transformer):
    return [name for name, _ in family_for(transformer).find(transformer, STEP_CACHED)]


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_taylor_forecasts_follow_the_hand_computation_from_the_full_steps(transformer):
    """Order 1: at step 2, y1 + (y1 - y0); after the full step 3 (two steps after 1), y3 + x (y3 - y1) / 2."""
    config = ForecastSearchConfig(actions="FFfFff", max_order=1, basis="taylor")
    stats, rec = run(transformer, config, 6)
    assert stats.full_steps == (0, 1, 3)
    assert [r.num_recomputed for r in stats.steps] == [TOKENS, TOKENS, 0, TOKENS, 0, 0]
    for name in names(transformer):
        for k, (y0, y1, y3) in enumerate(zip(*(tensors(rec[s]["out", name]) for s in (0, 1, 3)))):
            if y0 is None:
                continue
            assert close(tensors(rec[2]["out", name])[k], y1 + (y1 - y0)), name
            for s, x in ((4, 1), (5, 2)):
                assert close(tensors(rec[s]["out", name])[k], y3 + x * (y3 - y1) / 2), (name, s)


def test_hermite_forecasts_weigh_the_authors_factors_with_scaled_hermite_polynomials(transformer):
    config = ForecastSearchConfig(actions="FFFff", max_order=2, basis="hermite", scale=0.7, correction="none")
    _, rec = run(transformer, config, 5)

    def weight(x, i):
        return config.scale ** i * H.hermval(config.scale * x, [0] * i + [1]) / math.factorial(i)

    for name in names(transformer):
        for k, (y0, y1, y2) in enumerate(zip(*(tensors(rec[s]["out", name]) for s in range(3)))):
            if y0 is None:
                continue
            f1, f2 = y2 - y1, (y2 - y1) - (y1 - y0)
            for s, x in ((3, 1), (4, 2)):
                assert close(tensors(rec[s]["out", name])[k], y2 + weight(x, 1) * f1 + weight(x, 2) * f2), (name, s)


@pytest.mark.parametrize("correction, gamma", [("cluster", 0.6), ("topk", 1.0)])
def test_corrected_tokens_equal_a_full_computation_and_the_rest_follows_the_correction(transformer, correction, gamma):
    """At a corrected step each image MLP's chosen tokens are what the unpatched MLP computes for them from the
    full input; every other token is the forecast plus gamma times its cluster's representative's error
    ("cluster"), or the forecast itself ("topk"); the other modules are forecast."""
    config = ForecastSearchConfig(actions="FFcc", num_corrected=6, gamma=gamma, correction=correction, max_order=1,
                                  basis="taylor")
    originals = {name: copy.deepcopy(m) for name, m in family_for(transformer).find(transformer, STEP_CACHED)}
    stats, rec = run(transformer, config, 4)
    assert [r.phase for r in stats.steps] == ["full", "full", "corrected", "corrected"]
    assert [r.num_recomputed for r in stats.steps] == [TOKENS, TOKENS, 6, 6]
    for s in (2, 3):
        index, labels = rec[s]["index"], rec[s]["labels"]
        assert index.shape == (BATCH, 6)
        for name in names(transformer):
            y0, y1 = (tensors(rec[t]["out", name]) for t in (0, 1))
            forecast = [None if a is None else b + (s - 1) * (b - a) for a, b in zip(y0, y1)]
            out = tensors(rec[s]["out", name])
            if not name.endswith(".ff"):
                assert all(f is None or close(o, f) for o, f in zip(out, forecast)), name
                continue
            with torch.no_grad():
                exact = originals[name](rec[s]["in", name])  # every token, from the step's input
            want = forecast[0].clone()
            for b in range(BATCH):
                picked = index[b]
                assert close(out[0][b, picked], exact[b, picked]), name
                if correction == "cluster":  # each cluster: the mean error of its computed tokens
                    error = exact[b, picked] - forecast[0][b, picked]  # [K, D]
                    for c in labels[b].unique():
                        mine = labels[b, picked] == c
                        if mine.any():
                            want[b, labels[b] == c] += gamma * error[mine].mean(0)
                want[b, picked] = exact[b, picked]
            assert close(out[0], want), name


def test_topk_picks_rotate_by_staleness():
    transformer = MAKERS["sd3"]()
    _, rec = run(transformer, ForecastSearchConfig(actions="FFccc", num_corrected=8, correction="topk"), 5)
    picks = [set(rec[s]["index"][0].tolist()) for s in (2, 3, 4)]
    assert picks[0] != picks[1]  # the tokens just computed are the stalest no more


def test_caches_are_updated_in_place_within_a_generation():
    transformer = MAKERS["sd3"]()
    config = ForecastSearchConfig(actions="FFcFfcFc", num_corrected=4, correction="cluster")
    pointers = []
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=True, num_steps=8)
        for s, call in enumerate(step_inputs(transformer, 8)):
            transformer(**call)
            if s >= 1:
                state = handle.state
                factors = [f.data_ptr() for c in state.caches for e in c.elements if e for f in e]
                pointers.append((factors, state.index.data_ptr(), state.labels.data_ptr(), state.live.data_ptr()))
    assert all(p == pointers[0] for p in pointers)


@pytest.mark.parametrize("correction", ["none", "cluster", "topk"])
def test_forecast_and_corrected_steps_read_nothing_back_from_the_device(correction):
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "allclose"}

    class Watch(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    transformer = MAKERS["sd3"]()
    actions = "FFfcc" if correction != "none" else "FFfff"
    with torch.no_grad(), cat.apply(transformer, ForecastSearchConfig(actions=actions, num_corrected=4,
                                                                      correction=correction)) as handle:
        handle.reset(cfg_pairs=True, num_steps=5)
        handle.clock.watches_timesteps = False  # a bare transformer's clock reads the timestep; a pipeline's does not
        calls = step_inputs(transformer, 5)
        for call in calls[:2]:
            transformer(**call)
        for call in calls[2:]:
            with Watch() as watch:
                transformer(**call)
            assert not watch.seen & reads, watch.seen & reads


def test_forecast_and_corrected_steps_compile_to_one_graph_each_and_never_recompile():
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    transformer = MAKERS["sd3"]()
    actions = "FFfcfccfFfccfc"
    calls = step_inputs(transformer, len(actions))
    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounter()

    def generation(handle):
        handle.reset(cfg_pairs=True, num_steps=len(actions))
        return [transformer(**call)[0] for call in calls]

    config = ForecastSearchConfig(actions=actions, num_corrected=4, correction="cluster")
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        eager = generation(handle)
        handle.compile(backend=backend, fullgraph=True)
        first = generation(handle)
        frames = backend.frame_count
        second = generation(handle)
        again = backend.frame_count
    assert frames <= 3 and again == frames  # full, forecast and corrected steps, for the repeated blocks
    assert not counters["graph_break"]
    for got, want in zip(first, eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# the calibration and the search, on a tiny pipeline

STEPS = 6
CALL = {"guidance_scale": 5.0, "height": 32, "width": 32, "max_sequence_length": 8}


@pytest.fixture(scope="module")
def calibrated():
    pipe = testing.tiny_sd3_pipeline()
    config = ForecastSearchConfig(num_corrected=4, max_skip=2, gamma=0.5, max_order=1, basis="taylor")
    measured = ForecastSearchConfig.calibrate(pipe, ["a red circle"], STEPS, config=config,
                                              generator=torch.Generator().manual_seed(0), **CALL)
    return pipe, config, ForecastSearchConfig.combine_calibrations([measured])


def test_the_calibration_measures_every_segment_and_lists_the_searched_schedules(calibrated):
    _, config, found = calibrated
    search = found["search"]
    assert search["num_steps"] == STEPS and search["guidance_scale"] == 5.0 and search["prompts"] == 1
    assert search["settings"] == {"num_corrected": 4, "gamma": 0.5, "max_order": 1, "basis": "taylor", "scale": 0.5,
                                  "max_skip": 2, "warmup_steps": 1}
    for kind in ("none", "cluster", "topk"):
        costs = search["costs"][kind]
        for i, row in enumerate(costs):
            assert [c is not None for c in row] == [i + skipped < STEPS for skipped in (1, 2)]
            assert all(c >= 0 for c in row if c is not None)
    macs = search["macs"]
    assert macs["none"]["F"] == macs["model"] < macs["cluster"]["F"]  # a full step with clustering counts its k-means
    assert macs["none"]["f"] == macs["cluster"]["f"] < macs["cluster"]["c"] == macs["topk"]["c"] < macs["model"] / 10
    json.dumps(found)  # written as returned
    for kind, by_budget in found["schedules"].items():
        for budget, actions in by_budget.items():
            setting = dataclasses.replace(config, calibration=search, budget=float(budget), correction=kind)
            assert setting.plan(STEPS) == actions  # the config's search gives the listed schedule


def test_calibrations_of_several_prompts_combine_into_their_mean_costs_and_one_search(calibrated):
    """scripts/calibrate.py measures one prompt at a time (`calibrate`) and combines them
    (`combine_calibrations`): costs weighed by prompts, the schedules searched on the mean; calibrations of
    other settings do not combine."""
    _, config, found = calibrated
    one = found["search"]
    scaled = {**one, "prompts": 3,
              "costs": {kind: [[None if c is None else 5 * c for c in row] for row in table]
                        for kind, table in one["costs"].items()}}
    both = ForecastSearchConfig.combine_calibrations([{"search": one}, {"search": scaled}])
    assert both["search"]["prompts"] == 4
    for kind, table in one["costs"].items():
        for row, mean in zip(table, both["search"]["costs"][kind]):
            assert all(m is None if c is None else math.isclose(m, (c + 3 * 5 * c) / 4) for c, m in zip(row, mean))
    for kind, by_budget in both["schedules"].items():
        for budget, actions in by_budget.items():
            setting = dataclasses.replace(config, calibration=both["search"], budget=float(budget), correction=kind)
            assert setting.plan(STEPS) == actions
    other = {**one, "settings": {**one["settings"], "num_corrected": 8}}
    with pytest.raises(ValueError, match="the calibrations differ in settings"):
        ForecastSearchConfig.combine_calibrations([{"search": one}, {"search": other}])


@pytest.mark.parametrize("correction", ["none", "cluster"])
@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_the_searched_schedule_stays_within_its_macs_budget_as_the_counter_counts_it(calibrated, budget, correction):
    """The executed MACs (the harness's meter, on another prompt) are what the search spent, to the MAC, and
    within the budget. The harness's offline count (meta device, image tokens per step) takes a full step as the
    model's own; the method's full steps also run a few k-means steps, which the meter counts."""
    from cat.core.schedule import schedule_macs
    from experiments.run.macs import realised_transformer_macs, report_from_config

    pipe, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], budget=budget, correction=correction,
                                  guidance_scale=5.0)
    call = lambda: pipe(["a blue square"], num_inference_steps=STEPS, output_type="latent",  # noqa: E731
                        generator=torch.Generator().manual_seed(1), **CALL)
    full = realised_transformer_macs(pipe, call)
    with cat.apply(pipe, setting):
        executed = realised_transformer_macs(pipe, call)
    macs = setting.macs()
    actions = setting.plan(STEPS)
    assert executed == schedule_macs(actions, macs) and full == STEPS * macs["model"]  # one CFG pair, as calibrated
    assert 1 - executed / full >= budget
    tcfg = {k: v for k, v in dict(pipe.transformer.config).items() if not k.startswith("_")}
    meta = report_from_config("SD3Transformer2DModel", tcfg, height=32, width=32, text_tokens=85, steps=STEPS,
                              guidance=True, method=setting, vae_scale=1)
    clustering = actions.count("F") * (macs["F"] - macs["model"])
    assert meta.transformer_macs + clustering == executed and meta.transformer_macs_full == full


def test_a_calibration_for_other_settings_guidance_or_steps_is_refused_unless_reused(calibrated):
    pipe, config, found = calibrated
    search = found["search"]
    ok = dataclasses.replace(config, calibration=search, guidance_scale=5.0, correction="cluster")
    assert ok.missing_calibration("SD3Transformer2DModel") is None
    other = dataclasses.replace(ok, num_corrected=8)
    assert "num_corrected=8 (measured with 4)" in other.missing_calibration("SD3Transformer2DModel")
    with pytest.raises(ValueError, match="measured with other settings"):
        other.plan(STEPS)
    assert dataclasses.replace(ok, correction="none", num_corrected=8).missing_calibration("x") is None  # not read
    louder = dataclasses.replace(ok, guidance_scale=7.0)
    assert "measured at guidance_scale=5.0, and the run uses 7.0" in louder.missing_calibration("x")
    assert dataclasses.replace(louder, reuse_calibration=True).missing_calibration("x") is None
    with pytest.raises(ValueError, match=r"^ForecastSearchConfig\.calibration was measured at 6 steps, this run has 8: "
                                         r"calibrate at 8 steps, or set reuse_calibration=True\.$"):
        ok.check_steps(8)
    reused = dataclasses.replace(ok, reuse_calibration=True)
    assert len(reused.plan(8)) == 8
    with cat.apply(pipe, ok):  # the pipeline's own guidance scale is checked at its first step
        with pytest.raises(ValueError, match="this call uses 7.0"):
            pipe(["a red circle"], num_inference_steps=STEPS, output_type="latent",
                 **{**CALL, "guidance_scale": 7.0})


def test_cuda_graphs_are_refused_before_anything_is_patched():
    """Its factors are kept across calls and refreshed inside the compiled blocks: not graph-safe
    (`cat.check_cuda_graphs`, as the harness asks before loading a model)."""
    transformer = MAKERS["sd3"]()
    config = ForecastSearchConfig(actions="FFf")
    with pytest.raises(ValueError, match=r"reduce-overhead.*refused for 'forecast_search'"):
        cat.check_cuda_graphs(type(config).handle, config, "reduce-overhead")
    with pytest.raises(ValueError, match=r"reduce-overhead.*refused for 'forecast_search'"):
        cat.apply(transformer, config, compile=True, compile_mode="reduce-overhead")
    assert not hasattr(transformer, "_diffusers_hook") and not hasattr(transformer, "_cat_method")


def test_a_searched_schedule_without_calibration_names_the_command():
    config = ForecastSearchConfig(correction="cluster")
    assert "needs its segment costs measured" in config.missing_calibration("SD3Transformer2DModel")
    with pytest.raises(ValueError, match="scripts/calibrate.py method=forecast_search"):
        config.plan(28)
    assert ForecastSearchConfig(budget=0.0).missing_calibration("x") is None
    assert ForecastSearchConfig(actions="FFf").missing_calibration("x") is None


@pytest.mark.parametrize("field, value, allowed", [
    ("budget", 1.0, "a number in \\[0, 1\\)"), ("schedule", "greedy", "one of searched, interval"),
    ("correction", "all", "one of none, cluster, topk"), ("num_corrected", 0, "an integer >= 1"),
    ("gamma", 1.5, "a number in \\[0, 1\\]"), ("basis", "chebyshev", "one of taylor, hermite"),
    ("max_skip", 0, "an integer >= 1"), ("actions", "fFF", "None or a string of F, f, c starting with F"),
])
def test_bad_fields_are_named_with_their_range(field, value, allowed):
    message = rf"ForecastSearchConfig\.{field}={value!r} is invalid: {field} must be {allowed}"
    with pytest.raises(ValueError, match=message):
        ForecastSearchConfig(**{field: value})
    with pytest.raises(ValueError, match="full \\(F\\) at the 2 warm-up steps"):
        ForecastSearchConfig(actions="Ffff", warmup_steps=2)
    with pytest.raises(ValueError, match="free of corrected steps"):
        ForecastSearchConfig(actions="Ffcf", correction="none")


def test_the_run_key_ignores_what_a_setting_never_reads():
    assert {"num_corrected", "gamma"} <= set(ForecastSearchConfig(correction="none").key_ignores())
    assert "gamma" in ForecastSearchConfig(correction="topk").key_ignores()
    assert "gamma" not in ForecastSearchConfig(correction="cluster").key_ignores()
    assert "scale" in ForecastSearchConfig(basis="taylor").key_ignores()
    assert "scale" not in ForecastSearchConfig(basis="hermite").key_ignores()
    assert {"budget", "schedule", "calibration"} <= set(ForecastSearchConfig(actions="FFf").key_ignores())
    assert "max_skip" in ForecastSearchConfig(schedule="interval").key_ignores()


# fewer solver steps


def test_forecast_steps_run_the_budgets_full_steps_plus_k_forecast_steps(calibrated):
    """`forecast_steps=K`: the call runs B + K steps (`call_overrides(reference_steps=R)`), B the full steps the
    budget allows beside K forecast steps, every full step of the schedule a full step of the model; the reference's
    steps where the budget leaves room for all but K; at budget 0 the plain pipeline, bit-exact."""
    pipe, config, found = calibrated
    prompt = lambda: dict(generator=torch.Generator().manual_seed(3), output_type="latent", **CALL)  # noqa: E731
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.4, forecast_steps=1)
    macs = setting.macs()
    full = math.floor((0.6 * STEPS * macs["model"] - macs["f"]) / macs["F"])  # 3: 3.6 full steps' MACs
    actions = setting.plan(STEPS)
    assert len(actions) == full + 1 and actions.count("F") == full and actions.count("f") == 1
    with cat.apply(pipe, setting) as handle:
        overrides = handle.call_overrides(reference_steps=STEPS)
        assert overrides == {"num_inference_steps": full + 1}
        pipe(["a blue square"], **{**prompt(), **overrides})
        assert "".join({"full": "F", "forecast": "f"}[r.phase] for r in handle.stats.steps) == actions
    assert dataclasses.replace(setting, budget=0.1).plan(STEPS).__len__() == STEPS  # room for all but K: the reference's
    for budget in (0.0, 0.1, 0.3, 0.4, 0.6, 0.8):  # the call's step count is the schedule's
        for cfg in (dataclasses.replace(setting, budget=budget),
                    dataclasses.replace(setting, budget=budget, correction="cluster", num_corrected=4)):
            assert cfg.call_overrides(STEPS) == {"num_inference_steps": len(cfg.plan(STEPS))}, (budget, cfg.correction)
    # without a calibration (an evenly spaced schedule by image tokens): the same step count, the tokens unknown
    interval = ForecastSearchConfig(schedule="interval", budget=0.5, forecast_steps=1)
    with cat.apply(pipe, interval) as handle:
        overrides = handle.call_overrides(reference_steps=STEPS)
        assert overrides == {"num_inference_steps": 4}  # 3 full steps (half of 6) plus 1 forecast step
        pipe(["a blue square"], **{**prompt(), **overrides})
        assert [r.phase for r in handle.stats.steps].count("full") == 3 == len(handle.stats.steps) - 1
    plain = pipe(["a blue square"], num_inference_steps=STEPS, **prompt()).images
    with cat.apply(pipe, dataclasses.replace(setting, budget=0.0)) as handle:
        same = pipe(["a blue square"], **{**prompt(), **handle.call_overrides(reference_steps=STEPS)}).images
    assert torch.equal(same, plain)


def test_forecast_steps_need_the_reference_and_a_call_that_runs_their_steps(calibrated):
    pipe, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.4, forecast_steps=1)
    with pytest.raises(ValueError, match=r"forecast_steps=1\) runs fewer steps than the reference, computed from the "
                                         r"reference's step count: call the pipeline with \*\*handle\.call_overrides"):
        setting.call_overrides()
    with cat.apply(pipe, setting) as handle:
        with pytest.raises(ValueError, match=r"forecast_steps=1\) runs fewer steps than the reference: call the "
                                             r"pipeline with \*\*handle\.call_overrides"):
            pipe(["a blue square"], num_inference_steps=STEPS, output_type="latent", **CALL)
        steps = handle.call_overrides(reference_steps=STEPS)["num_inference_steps"]
        with pytest.raises(ValueError, match=rf"plans {steps} steps for a reference of {STEPS}, and this call runs "
                                             rf"{STEPS}"):
            pipe(["a blue square"], num_inference_steps=STEPS, output_type="latent", **CALL)
    with pytest.raises(ValueError, match=r"forecast_steps=2 is invalid: forecast_steps must be None when actions are "
                                         r"given"):
        ForecastSearchConfig(actions="FFfF", forecast_steps=2)
    with pytest.raises(ValueError, match=r"forecast_steps=0 is invalid: forecast_steps must be None or an integer >= 1"):
        ForecastSearchConfig(forecast_steps=0)


def test_forecast_steps_are_counted_by_the_meter_and_offline_against_the_reference(calibrated):
    """The plan has the sampler's steps (the offline MAC count runs those), the executed MACs on the pipeline are
    the schedule's, within the budget against the reference's steps, and the meta count agrees."""
    from cat.core.schedule import schedule_macs
    from experiments.run.macs import realised_transformer_macs, report_from_config

    pipe, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.4, forecast_steps=1)
    actions, macs = setting.plan(STEPS), setting.macs()
    assert setting.offline_schedule(STEPS, TOKENS) == [TOKENS if a == "F" else 0 for a in actions]
    call = lambda steps: lambda: pipe(["a blue square"], num_inference_steps=steps, output_type="latent",  # noqa: E731
                                      generator=torch.Generator().manual_seed(1), **CALL)
    full = realised_transformer_macs(pipe, call(STEPS))
    with cat.apply(pipe, setting) as handle:
        executed = realised_transformer_macs(pipe, call(handle.call_overrides(STEPS)["num_inference_steps"]))
    assert executed == schedule_macs(actions, macs) <= 0.6 * full and full == STEPS * macs["model"]
    assert math.isclose(setting.reduction(STEPS), 1 - executed / full)
    tcfg = {k: v for k, v in dict(pipe.transformer.config).items() if not k.startswith("_")}
    meta = report_from_config("SD3Transformer2DModel", tcfg, height=32, width=32, text_tokens=85, steps=STEPS,
                              guidance=True, method=setting, vae_scale=1)
    assert meta.transformer_macs + actions.count("F") * (macs["F"] - macs["model"]) == executed
    assert meta.transformer_macs_full == full


def test_a_budget_no_schedule_meets_still_keeps_runs_of_at_most_max_skip_and_says_it_falls_short(calibrated):
    """Warm-up and max_skip that leave no schedule within the budget: the searched schedule with the fewest full
    steps they allow, i.e. the one of the tightest budget it meets (its reduction below the budget asked, its
    predicted cost NaN), never a forecast run longer than max_skip; an evenly spaced schedule on a budget whose full
    steps are a whole number in exact arithmetic keeps that number (float rounding does not drop one)."""
    _, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.8, warmup_steps=2)
    actions, cost = setting.searched(STEPS)  # max_skip 2: at least 3 full steps of 6, the budget allows 1.2
    assert actions.count("F") == 3 and math.isnan(cost) and max(map(len, actions.split("F"))) <= config.max_skip
    tightest = dataclasses.replace(setting, budget=setting.reduction(STEPS) - 1e-6)
    assert setting.reduction(STEPS) < 0.8 and tightest.searched(STEPS)[0] == actions
    assert not math.isnan(tightest.searched(STEPS)[1])
    even = ForecastSearchConfig(schedule="interval", budget=0.8, warmup_steps=1)
    assert even.plan(20, 64).count("F") == 4 and even.reduction(20, 64) == pytest.approx(0.8)  # (1 - 0.8) * 20 = 4
    fewer = ForecastSearchConfig(schedule="interval", budget=0.8, forecast_steps=2).plan(20, 64)
    assert len(fewer) == 6 and fewer.count("F") == 4  # solver_steps and the schedule agree on the 4 full steps


def test_a_generation_whose_schedule_falls_short_of_its_budget_says_so(calibrated):
    pipe, config, found = calibrated
    short = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.8, warmup_steps=2)

    def said(setting):
        with warnings.catch_warnings(record=True) as caught, torch.no_grad(), cat.apply(pipe, setting):
            warnings.simplefilter("always")
            pipe("a red circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), **CALL)
        return [str(w.message) for w in caught if "is not met" in str(w.message)]

    (message,) = said(short)
    assert f"(budget=0.8) is not met with warmup_steps=2 and max_skip=2 at {STEPS} steps" in message
    assert f"saves {short.reduction(STEPS):.1%} of the executed MACs" in message and short.reduction(STEPS) < 0.8
    assert said(dataclasses.replace(short, budget=0.3)) == []


def test_forecast_steps_check_the_calibrations_step_count_against_the_reference(calibrated):
    _, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.4, forecast_steps=1)
    with pytest.raises(ValueError, match=rf"measured at {STEPS} steps, this run has 12"):
        setting.call_overrides(reference_steps=12)
    with pytest.raises(ValueError, match=rf"measured at {STEPS} steps, this run has 12"):
        setting.plan(12)
    assert dataclasses.replace(setting, reuse_calibration=True).call_overrides(reference_steps=12)


def test_a_bare_transformer_that_runs_past_its_schedule_is_stopped(calibrated):
    """No step count given (a bare transformer without `handle.reset(num_steps=...)`): the schedule is the
    calibration's step count, and a call past its end raises instead of running an unplanned full step."""
    pipe, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.4)
    transformer = pipe.transformer
    inputs = step_inputs(transformer, STEPS + 1)
    with torch.no_grad(), cat.apply(transformer, setting):
        for call in inputs[:STEPS]:
            transformer(**call)
        with pytest.raises(ValueError, match=rf"more steps than its schedule's {STEPS}"):
            transformer(**inputs[STEPS])


def test_the_macs_report_gives_the_full_models_macs_per_reference_step_for_a_method_that_runs_fewer(calibrated):
    from experiments.run.macs import report_from_config

    pipe, config, found = calibrated
    setting = dataclasses.replace(config, calibration=found["search"], guidance_scale=5.0, budget=0.5, forecast_steps=1)
    tcfg = {k: v for k, v in dict(pipe.transformer.config).items() if not k.startswith("_")}
    kwargs = dict(height=32, width=32, text_tokens=85, steps=STEPS, guidance=True, vae_scale=1)
    full = report_from_config("SD3Transformer2DModel", tcfg, method=None, **kwargs).as_metrics()
    fewer = report_from_config("SD3Transformer2DModel", tcfg, method=setting, **kwargs)
    assert len(fewer.step_macs) < STEPS
    assert fewer.as_metrics()["transformer_macs_per_step_full"] == full["transformer_macs_per_step_full"]
