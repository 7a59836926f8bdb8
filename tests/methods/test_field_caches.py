"""DBCache, TeaCache, Pyramid Attention Broadcast and FasterCache against a hand computation on tiny random SD3 and
PixArt transformers (CPU, a few calls each): what each must output at a cached step, computed here from the
unpatched model's own intermediate tensors and the method's rule as its authors' code states it (the configs'
docstrings cite it), and compared with what the method did."""

import numpy as np
import pytest
import torch

import cat
from cat import testing
from cat.families import family_for
from cat.methods.dbcache import DBCacheConfig
from cat.methods.fastercache import FasterCacheConfig
from cat.methods.pab import PABConfig
from cat.methods.teacache import TeaCacheConfig, fit_coefficients

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {"sd3": testing.tiny_sd3_transformer, "pixart": testing.tiny_pixart_transformer}


def step_inputs(transformer, steps: int, batch: int = 2, timesteps=None):
    """The keyword inputs of `steps` calls: a latent drifting slowly from call to call, the timestep going down."""
    g = torch.Generator().manual_seed(0)
    base = family_for(transformer).example_inputs(transformer.config, batch, 32, 32, 7, g)
    drift = torch.randn(base["hidden_states"].shape, generator=g)
    timesteps = timesteps or [1000.0 - 150.0 * s for s in range(steps)]
    return [{**base, "hidden_states": base["hidden_states"] + 0.05 * s * drift,
             "timestep": torch.full((batch,), timesteps[s])} for s in range(steps)]


class Record:
    """Per call of the transformer: every watched module's (args, kwargs, output), and the block stack's output
    (the input of `norm_out`, which every family applies right after the blocks)."""

    def __init__(self, transformer, names):
        self.calls: list[dict] = []
        self.handles = [transformer.norm_out.register_forward_pre_hook(self._stack)]
        for name in names:
            self.handles.append(transformer.get_submodule(name).register_forward_hook(self._module(name),
                                                                                       with_kwargs=True))

    def run(self, transformer, inputs):
        with torch.no_grad():
            for kwargs in inputs:
                self.calls.append({})
                transformer(**kwargs)
        for handle in self.handles:
            handle.remove()
        return self

    def _stack(self, module, args):
        self.calls[-1]["stack"] = args[0]

    def _module(self, name):
        def hook(module, args, kwargs, output):
            self.calls[-1][name] = (args, kwargs, output)
        return hook


def hidden_in(record):
    args, kwargs, _ = record
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def streams(output):
    """(hidden, encoder) of a block output: SD3's blocks return (encoder, hidden), PixArt's the hidden states."""
    return (output[1], output[0]) if isinstance(output, tuple) else (output, None)


def rerun(block, record, hidden, encoder):
    """`block` called as it was in `record`, on other hidden (and text) states."""
    args, kwargs, _ = record
    kwargs = dict(kwargs)
    if "hidden_states" in kwargs:
        kwargs["hidden_states"] = hidden
    else:
        args = (hidden, *args[1:])
    if encoder is not None:
        kwargs["encoder_hidden_states"] = encoder
    with torch.no_grad():
        return streams(block(*args, **kwargs))[0]


def rel_l1(a, b) -> float:
    return ((a - b).abs().mean() / b.abs().mean()).item()


# --- DBCache ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(MODELS))
def four_blocks(request):
    """A 4-block transformer (F1, two middle blocks, B1), 7 calls, and what the unpatched model computed."""
    transformer = MODELS[request.param](num_layers=4)
    inputs = step_inputs(transformer, 7)
    names = [f"transformer_blocks.{i}" for i in range(4)]
    return transformer, inputs, Record(transformer, names).run(transformer, inputs)


def run_patched(transformer, config, inputs, reset: dict | None = None):
    """The block stack's output at every call with `config` applied, and the handle's stats."""
    with cat.apply(transformer, config) as handle:
        if reset:
            handle.reset(**reset)
        record = Record(transformer, []).run(transformer, inputs)
        stats = handle.stats
    return [c["stack"] for c in record.calls], stats


def middle_residual(full, step):
    """The residual the two middle blocks added at `step` (image and text streams)."""
    f_h, f_e = streams(full.calls[step]["transformer_blocks.0"][2])
    m_h, m_e = streams(full.calls[step]["transformer_blocks.2"][2])
    return m_h - f_h, None if f_e is None else m_e - f_e


def expected_cached(transformer, full, step, residual):
    """Block 3 (Bn) run on the Fn output of `step` plus a middle residual: the stack output of a cached step."""
    f_h, f_e = streams(full.calls[step]["transformer_blocks.0"][2])
    r_h, r_e = residual
    return rerun(transformer.transformer_blocks[3], full.calls[step]["transformer_blocks.3"], f_h + r_h,
                 None if f_e is None else f_e + r_e)


def test_dbcache_cached_steps_run_fn_and_bn_on_the_reused_middle_residual(four_blocks):
    transformer, inputs, full = four_blocks
    config = DBCacheConfig(threshold=1.0, fn_blocks=1, bn_blocks=1, warmup_steps=3, max_continuous_cached_steps=2)
    stacks, stats = run_patched(transformer, config, inputs)
    # warm-up 0-2; then at most 2 cached in a row: 3, 4 cached, 5 computed (the count restarts), 6 cached
    assert stats.skipped_calls == [3, 4, 6] and [r.phase for r in stats.steps][3] == "skipped"
    assert stats.blocks_skipped == 2 * 3 and stats.blocks_computed == 7 * 4 - 2 * 3
    for step in (0, 1, 2, 5):  # computed steps are the full model's
        assert torch.equal(stacks[step], full.calls[step]["stack"])
    for step, computed in ((3, 2), (4, 2), (6, 5)):
        assert torch.equal(stacks[step], expected_cached(transformer, full, step, middle_residual(full, computed)))


def test_dbcache_taylorseer_forecasts_the_middle_residual_from_the_computed_steps(four_blocks):
    transformer, inputs, full = four_blocks
    r = {s: middle_residual(full, s) for s in range(5)}
    config = DBCacheConfig(threshold=1.0, fn_blocks=1, bn_blocks=1, warmup_steps=5, max_continuous_cached_steps=None,
                           taylorseer_order=2)
    stacks, stats = run_patched(transformer, config, inputs)
    assert stats.skipped_calls == [5, 6]
    for step, elapsed in ((5, 1), (6, 2)):
        # factors at step 4: R4, dR = R4 - R3, d2R = (R4 - R3) - (R3 - R2) (steps one apart)
        forecast = tuple(None if r[4][i] is None else
                         r[4][i] + (r[4][i] - r[3][i]) * elapsed
                         + ((r[4][i] - r[3][i]) - (r[3][i] - r[2][i])) * elapsed ** 2 / 2 for i in range(2))
        torch.testing.assert_close(stacks[step], expected_cached(transformer, full, step, forecast),
                                   rtol=1e-5, atol=1e-6)
    # their first difference is taken at the update of step 3: a step-3 cache after a warm-up of 3 reuses R2
    config = DBCacheConfig(threshold=1.0, fn_blocks=1, bn_blocks=1, warmup_steps=3, max_continuous_cached_steps=None,
                           taylorseer_order=1)
    stacks, _ = run_patched(transformer, config, inputs)
    assert torch.equal(stacks[3], expected_cached(transformer, full, 3, r[2]))


def test_dbcache_decides_on_the_fn_residual_difference_to_the_last_computed_step(four_blocks):
    transformer, inputs, full = four_blocks
    residual = [streams(c["transformer_blocks.0"][2])[0] - hidden_in(c["transformer_blocks.0"]) for c in full.calls]
    threshold = float(np.median([rel_l1(residual[s], residual[s - 1]) for s in range(2, 7)]))
    skipped, last = [], 0
    for s in range(1, 7):  # warm-up 1, no limits: cached while the difference to the last computed step is small
        if rel_l1(residual[s], residual[last]) < threshold:
            skipped.append(s)
        else:
            last = s
    assert 0 < len(skipped) < 6
    config = DBCacheConfig(threshold=threshold, fn_blocks=1, bn_blocks=1, warmup_steps=1,
                           max_continuous_cached_steps=None)
    _, stats = run_patched(transformer, config, inputs)
    assert stats.skipped_calls == skipped


def test_dbcache_limits_count_cached_steps_as_cache_dit_does():
    """cache-dit's `add_cached_step`: a non-adjacent cached step does not restart the count in a row; reaching the
    limit computes one step and restarts it."""
    transformer = testing.tiny_sd3_transformer()
    inputs = step_inputs(transformer, 10)
    _, stats = run_patched(transformer, DBCacheConfig(threshold=1.0, warmup_steps=1, max_continuous_cached_steps=2),
                           inputs)
    assert stats.skipped_calls == [1, 2, 4, 5, 7, 8]
    _, stats = run_patched(transformer, DBCacheConfig(threshold=1.0, warmup_steps=1, max_cached_steps=3,
                                                      max_continuous_cached_steps=None), inputs)
    assert stats.skipped_calls == [1, 2, 3]
    with pytest.raises(ValueError, match=r"fn_blocks=1 \+ bn_blocks=1 leave no middle block .* smaller than 2"):
        cat.apply(transformer, DBCacheConfig(bn_blocks=1))
    assert not hasattr(transformer, "_diffusers_hook")


# --- TeaCache --------------------------------------------------------------------------------------------------

def modulated_input(block, record):
    """Block 0's timestep-modulated input, as the authors compute it: AdaLN-Zero's first output on SD3; on PixArt,
    norm1(x) (1 + scale_msa) + shift_msa from the block's AdaLN-single table."""
    args, kwargs, _ = record
    x = hidden_in(record)
    with torch.no_grad():
        if "temb" in kwargs:
            return block.norm1(x, emb=kwargs["temb"])[0]
        table = block.scale_shift_table[None] + kwargs["timestep"].reshape(x.shape[0], 6, -1)
        return block.norm1(x) * (1 + table[:, 1:2]) + table[:, 0:1]


@pytest.mark.parametrize("name", list(MODELS))
def test_teacache_skips_on_the_accumulated_rescaled_change_and_reuses_the_stack_residual(name):
    transformer = MODELS[name]()
    steps = 7
    inputs = step_inputs(transformer, steps)
    full = Record(transformer, ["transformer_blocks.0"]).run(transformer, inputs)
    block = transformer.transformer_blocks[0]
    m = [modulated_input(block, c["transformer_blocks.0"]) for c in full.calls]
    coefficients = (0.0, 0.0, 1.0, 0.5, 0.0)  # d^2 + d / 2
    rescaled = [float(np.polyval(coefficients, rel_l1(m[s], m[s - 1]))) for s in range(1, steps)]
    threshold = rescaled[0] + 0.5 * rescaled[1]  # step 1 skipped, step 2 computed, then as the sums go
    skipped, accumulated, acc = [], [0.0], 0.0
    for s in range(1, steps):
        acc += rescaled[s - 1]
        if s < steps - 1 and acc < threshold:  # the last step always computes
            skipped.append(s)
        else:
            acc = 0.0
        accumulated.append(acc)
    assert skipped[0] == 1 and 2 not in skipped
    config = TeaCacheConfig(threshold=threshold, coefficients=coefficients)
    stacks, stats = run_patched(transformer, config, inputs, reset={"num_steps": steps})
    assert stats.skipped_calls == skipped
    assert stats.accumulated == pytest.approx(accumulated, rel=1e-6)
    computed = 0
    for s in range(steps):
        stack_in = hidden_in(full.calls[s]["transformer_blocks.0"])
        if s in skipped:  # the stack's input plus its residual at the last computed step
            last = full.calls[computed]
            reused = stack_in + (last["stack"] - hidden_in(last["transformer_blocks.0"]))
            assert torch.equal(stacks[s], reused), s
        else:
            assert torch.equal(stacks[s], full.calls[s]["stack"]), s
            computed = s


def test_teacache_calibration_fits_the_output_change_on_the_modulated_input_change():
    pipe = testing.tiny_sd3_pipeline()
    steps, kwargs = 6, {"guidance_scale": 5.0, "height": 32, "width": 32, "max_sequence_length": 8}
    inputs, outputs = [], []
    block0 = pipe.transformer.transformer_blocks[0]
    hooks = [block0.register_forward_hook(lambda mod, a, k, out: inputs.append(modulated_input(mod, (a, k, out))),
                                          with_kwargs=True),
             pipe.transformer.register_forward_hook(lambda mod, a, out: outputs.append(out[0]))]
    pipe("a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
         output_type="latent", **kwargs)
    for h in hooks:
        h.remove()
    x = [rel_l1(inputs[s], inputs[s - 1]) for s in range(1, steps)]
    y = [rel_l1(outputs[s], outputs[s - 1]) for s in range(1, steps)]
    state = {n: set(vars(mod)) for n, mod in pipe.transformer.named_modules()}

    measured = TeaCacheConfig.calibrate(pipe, ["a red circle"], steps, generator=torch.Generator().manual_seed(0),
                                        **kwargs)
    assert measured["input_changes"] == pytest.approx(x, rel=1e-5)
    assert measured["output_changes"] == pytest.approx(y, rel=1e-5)
    assert measured["coefficients"] == pytest.approx(list(np.polyfit(x, y, 4)), rel=1e-3, abs=1e-6)
    assert {n: set(vars(mod)) for n, mod in pipe.transformer.named_modules()} == state
    combined = TeaCacheConfig.combine_calibrations([measured, measured])  # every point of every prompt, one fit
    assert combined["points"] == 2 * (steps - 1) and len(combined["coefficients"]) == 5
    assert fit_coefficients(x + x, y + y) == combined["coefficients"]


def test_teacache_needs_a_polynomial_but_on_flux():
    assert TeaCacheConfig().missing_calibration("SD3Transformer2DModel").startswith("needs its rescaling polynomial")
    assert TeaCacheConfig().missing_calibration("FluxTransformer2DModel") is None
    assert TeaCacheConfig(coefficients=[1.0, 0.0]).missing_calibration("PixArtTransformer2DModel") is None
    transformer = testing.tiny_pixart_transformer()
    with pytest.raises(ValueError, match=r"TeaCacheConfig\.coefficients=None is invalid for PixArtTransformer2DModel"):
        cat.apply(transformer, TeaCacheConfig())
    assert not hasattr(transformer, "_diffusers_hook")


# --- Pyramid Attention Broadcast -------------------------------------------------------------------------------

class ComputedAttention:
    """Which attention modules really ran at each call: a forward hook on each one's query projection fires only
    when its attention computes, not when a broadcast hook returns the cached output."""

    def __init__(self, transformer, names):
        self.steps: list[set[str]] = []
        self.handles = [transformer.get_submodule(n).to_q.register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(module, args, output):
            self.steps[-1].add(name)
        return hook

    def run(self, transformer, inputs):
        outputs = []
        with torch.no_grad():
            for kwargs in inputs:
                self.steps.append(set())
                outputs.append(transformer(**kwargs)[0])
        for handle in self.handles:
            handle.remove()
        return outputs


PAB_ATTENTIONS = {"sd3": {"transformer_blocks.0.attn": "spatial", "transformer_blocks.1.attn": "spatial"},
                  "pixart": {f"transformer_blocks.{i}.attn{j}": kind for i in (0, 1)
                             for j, kind in ((1, "spatial"), (2, "cross"))}}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("warmup", [1, 3])
def test_pab_broadcasts_each_attention_at_the_steps_its_range_and_timesteps_say(name, warmup):
    transformer = MODELS[name]()
    timesteps = [999.0, 900.0, 700.0, 600.0, 450.0, 300.0, 150.0, 50.0]
    inputs = step_inputs(transformer, len(timesteps), timesteps=timesteps)
    config = PABConfig(spatial_range=2, spatial_timesteps=(100.0, 850.0), cross_range=3, cross_timesteps=(400.0, 800.0),
                       warmup_steps=warmup)
    rules = {"spatial": (2, 100.0, 850.0), "cross": (3, 400.0, 800.0)}
    expected = []  # diffusers' and VideoSys's rule: a count of calls per module, broadcast when count % range != 0
    for s, t in enumerate(timesteps):
        expected.append({n for n, kind in PAB_ATTENTIONS[name].items()
                         if s < warmup or not rules[kind][1] < t < rules[kind][2] or s % rules[kind][0] == 0})
    names = list(PAB_ATTENTIONS[name])
    outputs = {n: [] for n in names}
    watch = [transformer.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: outputs[n].append(out)) for n in names]
    with cat.apply(transformer, config) as handle:
        handle.reset(num_steps=len(timesteps))
        counter = ComputedAttention(transformer, names)
        counter.run(transformer, inputs)
        stats = handle.stats
    for w in watch:
        w.remove()
    assert counter.steps == expected
    assert stats.broadcast == {s: [n for n in names if n not in e] for s, e in enumerate(expected) if set(names) - e}
    assert [r.phase for r in stats.steps] == ["full" if e == set(names) else "partial" for e in expected]
    for n in names:  # a broadcast output is the module's output at its last computed step
        last = 0
        for s in range(len(timesteps)):
            if n in expected[s]:
                last = s
            else:
                assert outputs[n][s] is outputs[n][last]


def test_pab_reads_a_pipelines_timesteps_from_its_scheduler():
    pipe = testing.tiny_sd3_pipeline()
    config = PABConfig(spatial_range=3, spatial_timesteps=(200.0, 900.0), warmup_steps=2)
    with cat.apply(pipe, config) as handle:
        pipe("a red circle", num_inference_steps=8, guidance_scale=5.0, height=32, width=32, max_sequence_length=8,
             output_type="latent", generator=torch.Generator().manual_seed(0))
        stats = handle.stats
    timesteps = pipe.scheduler.timesteps.tolist()
    broadcast = [s for s, t in enumerate(timesteps) if s >= 2 and 200.0 < t < 900.0 and s % 3 != 0]
    assert sorted(stats.broadcast) == broadcast and broadcast


# --- FasterCache -----------------------------------------------------------------------------------------------

def split_frequencies(x):
    """Low and high frequencies of each channel: the centred FFT inside / outside a disc of radius min(H, W) // 5
    (the authors' `fft`, `scripts/latte/fastercache_sample_latte.py`)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float()))
    h, w = x.shape[-2:]
    y, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = (xx - w // 2) ** 2 + (y - h // 2) ** 2 <= (min(h, w) // 5) ** 2
    return spectrum * disc, spectrum * ~disc


@pytest.mark.parametrize("name", list(MODELS))
def test_fastercache_approximates_the_unconditional_half_from_the_conditional_one(name):
    """CFG-Cache alone (attention interval 1): steps 1 and 2 compute the conditional half only; the unconditional
    output is ifft(delta_low a^k + low(cond) + delta_high b^k + high(cond)) with the deltas of step 0, scaled once per
    skipped step (low while step <= low_freq_end, high from high_freq_start)."""
    transformer = MODELS[name]()
    inputs = step_inputs(transformer, 4)  # a batch of 2: [uncond, cond] of one prompt
    config = FasterCacheConfig(attention_interval=1, uncond_interval=3, warmup_steps=1, uncond_start=1, low_freq_end=1,
                               high_freq_start=2, alpha_low=1.1, alpha_high=1.3)
    with cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=True, num_steps=4)
        with torch.no_grad():
            outputs = [transformer(**kwargs)[0] for kwargs in inputs]
        stats = handle.stats
    assert stats.uncond_skipped == [1, 2] and stats.attentions_reused == 0
    assert [r.phase for r in stats.steps] == ["full", "partial", "partial", "full"]
    with torch.no_grad():
        full = transformer(**inputs[0])[0]
        cond = [transformer(**{k: v[1:] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})[0]
                for kwargs in inputs]
    torch.testing.assert_close(outputs[0], full, rtol=0, atol=0)
    low_u, high_u = split_frequencies(full[:1])
    low_c, high_c = split_frequencies(full[1:])
    delta_low, delta_high = low_u - low_c, high_u - high_c
    for step, (a, b) in ((1, (1.1, 1.0)), (2, (1.0, 1.3))):
        delta_low, delta_high = delta_low * a, delta_high * b
        assert torch.equal(outputs[step][1:], cond[step])  # the conditional half, computed alone
        low, high = split_frequencies(cond[step])
        uncond = torch.fft.ifft2(torch.fft.ifftshift(delta_low + low + delta_high + high)).real
        torch.testing.assert_close(outputs[step][:1], uncond.to(outputs[step].dtype), rtol=1e-5, atol=1e-6)


def test_fastercache_extrapolates_attention_from_its_last_two_outputs():
    """Without CFG (diffusers' guidance-distilled mode): an attention runs every 3rd call and is o_t + (o_t - o_{t-2})
    w in between, its cache rolling on every call (the first reuse after a computed step extrapolates from the two
    cached outputs, the next from the first reuse)."""
    transformer = testing.tiny_sd3_transformer()
    inputs = step_inputs(transformer, 6)
    names = ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    outputs = {n: [] for n in names}
    watch = [transformer.get_submodule(n).register_forward_hook(lambda mod, a, out, n=n: outputs[n].append(out))
             for n in names]
    config = FasterCacheConfig(attention_interval=3, attention_weight=0.3, uncond_interval=1, warmup_steps=1)
    with cat.apply(transformer, config) as handle:
        counter = ComputedAttention(transformer, names)
        counter.run(transformer, inputs)
        stats = handle.stats
    for w in watch:
        w.remove()
    assert counter.steps == [set(names), set(), set(), set(names), set(), set()]
    assert stats.attentions_reused == 4 * 2 and stats.uncond_skipped == []

    def extrapolate(t, t2):
        return tuple(a + (a - b) * 0.3 for a, b in zip(t, t2))

    for n in names:
        o = outputs[n]
        expected = {1: extrapolate(o[0], o[0]), 2: extrapolate(o[1], o[0]), 4: extrapolate(o[3], o[2]),
                    5: extrapolate(o[4], o[3])}
        for step, value in expected.items():
            for got, want in zip(o[step], value):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_fastercache_cuts_pixart_alphas_size_conditions_to_the_conditional_half():
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_config({**testing.tiny_pixart_transformer().config,
                                                        "use_additional_conditions": True})
    inputs = step_inputs(transformer, 3)
    g = torch.Generator().manual_seed(1)
    sizes = {"resolution": torch.rand(2, 2, generator=g), "aspect_ratio": torch.rand(2, 1, generator=g)}
    inputs = [{**kwargs, "added_cond_kwargs": sizes} for kwargs in inputs]
    config = FasterCacheConfig(attention_interval=1, uncond_interval=2, warmup_steps=1, uncond_start=1)
    with cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=True, num_steps=3)
        with torch.no_grad():
            out = [transformer(**kwargs)[0] for kwargs in inputs][1]
        assert handle.stats.uncond_skipped == [1]
    cond = {k: v[1:] if isinstance(v, torch.Tensor) else v for k, v in inputs[1].items()}
    cond["added_cond_kwargs"] = {k: v[1:] for k, v in sizes.items()}
    with torch.no_grad():
        assert torch.equal(out[1:], transformer(**cond)[0])
