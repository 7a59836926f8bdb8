"""Invariants of every model adapter on tiny random pipelines built in the test (CPU, no network)."""

import pytest
import torch

import cat

from .families import FAMILIES, INPUTS

STEPS = 10
CFG = cat.CATConfig(keep_ratio=0.3, warmup_steps=4, num_clusters=8)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    fam = FAMILIES[request.param]
    fam.pipe = fam.pipeline()
    return fam


def generate(family, prompts=("a red circle", "a blue square"), steps=STEPS, guidance=5.0, **kwargs):
    kwargs = {"height": 32, "width": 32, **family.pipeline_kwargs, **kwargs}
    return family.pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                       generator=torch.Generator().manual_seed(0), **kwargs).images


def _module_state(transformer):
    return {name: (set(vars(m)), getattr(m, "processor", None)) for name, m in transformer.named_modules()}


def test_pruning_disabled_is_bit_identical(family):
    base = generate(family)
    with cat.apply(family.pipe, cat.CATConfig(keep_ratio=1.0, warmup_steps=4, num_clusters=8)):
        assert torch.equal(generate(family), base)
    with cat.apply(family.pipe, cat.CATConfig(warmup_steps=STEPS - 1, keep_ratio=1.0, num_clusters=8)):
        assert torch.equal(generate(family), base)
    # a warm-up covering every step would prune nothing: refused at the first call, not run as the full model
    with cat.apply(family.pipe, cat.CATConfig(warmup_steps=STEPS, num_clusters=8)):
        with pytest.raises(ValueError, match=rf"warmup_steps={STEPS} is invalid"):
            generate(family)


def test_apply_generate_remove_restores_exactly(family):
    pipe = family.pipe
    base = generate(family)
    before = _module_state(pipe.transformer)  # after a plain call: FLUX's cache_context adds a hook registry
    handle = cat.apply(pipe, CFG)
    pruned = generate(family)
    assert not torch.equal(pruned, base)
    assert handle.stats.tokens_per_step == [256] * 4 + [77] * (STEPS - 4)
    handle.remove()
    assert torch.equal(generate(family), base)
    assert _module_state(pipe.transformer) == before
    assert "encode_prompt" not in vars(pipe)


def test_two_identical_calls_give_identical_images(family):
    with cat.apply(family.pipe, CFG):
        assert torch.equal(generate(family), generate(family))


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_batches_sizes_and_images_per_prompt(family, guidance):
    prompts = ("a red circle", "a blue square", "a green tree")
    with cat.apply(family.pipe, CFG) as handle:
        images = generate(family, prompts, guidance=guidance, height=32, width=48, num_images_per_prompt=2)
        stats = handle.stats
    assert images.shape == (6, 3, 32, 48)
    assert stats.grid == (16, 24)
    assert stats.cfg_pairs is (family.has_cfg and guidance > 1)
    pruned = [r for r in stats.steps if r.phase == "pruned"]
    assert len(pruned) == STEPS - 4
    k = CFG.num_kept(16 * 24)
    for rec in pruned:
        assert rec.active.shape == (6, 384)
        assert rec.active.sum(dim=1).tolist() == [k] * 6
    selections = {tuple(row.nonzero().flatten().tolist()) for row in pruned[0].active}
    assert len(selections) > 1, "every prompt should get its own selection"


def test_too_many_clusters_for_the_image_is_a_clear_error(family):
    with cat.apply(family.pipe, cat.CATConfig(num_clusters=300, warmup_steps=4)):
        with pytest.raises(ValueError, match="num_clusters=300"):
            generate(family, steps=6)


def test_applying_twice_raises(family):
    with cat.apply(family.pipe, CFG):
        with pytest.raises(RuntimeError, match="already applied"):
            cat.apply(family.pipe, CFG)
    cat.apply(family.pipe, CFG).remove()


# Transformer-level invariants: each call is one step; `reset` starts a generation.

@pytest.mark.parametrize("name", list(FAMILIES))
def test_cache_filling_full_step_is_bit_identical(name):
    """The full step that fills every cache runs through CAT's own processors: same bits as the original."""
    transformer = FAMILIES[name].transformer()
    inputs = INPUTS[name](2)
    with torch.no_grad():
        ref = transformer(**inputs)[0]
        with cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
            handle.reset(cfg_pairs=True)
            outs = [transformer(**inputs)[0] for _ in range(2)]
            assert [r.phase for r in handle.stats.steps] == ["reference", "cluster"]
    for out in outs:
        assert torch.equal(out, ref)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("cfg_pairs", [True, False])
@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_fresh_caches_give_the_full_computation(name, cfg_pairs, size):
    """A pruned step whose caches come from the same input equals the full model (up to float reassociation)."""
    transformer = FAMILIES[name].transformer()
    inputs = INPUTS[name](4, *size)
    n = size[0] * size[1] // 4
    config = cat.CATConfig(keep_ratio=0.3, warmup_steps=2, num_clusters=4)
    with torch.no_grad():
        ref = transformer(**inputs)[0]
        with cat.apply(transformer, config) as handle:
            handle.reset(cfg_pairs=cfg_pairs)
            for _ in range(3):
                out = transformer(**inputs)[0]
            last = handle.stats.steps[-1]
    assert last.phase == "pruned" and last.num_recomputed == config.num_kept(n)
    assert last.active.sum(dim=1).tolist() == [config.num_kept(n)] * (2 if cfg_pairs else 4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_selected_tokens_follow_the_input_and_the_rest_keep_their_output(name):
    transformer = FAMILIES[name].transformer()
    a, b = INPUTS[name](2, seed=0), INPUTS[name](2, seed=1)
    spec = cat.families.family_for(transformer)
    with torch.no_grad(), cat.apply(transformer, cat.CATConfig(keep_ratio=0.3, warmup_steps=2, num_clusters=4)) as h:
        h.reset(cfg_pairs=True)
        transformer(**a)
        out_a = spec.to_tokens(transformer, transformer(**a)[0])  # [B, N, D]
        out_b = spec.to_tokens(transformer, transformer(**b)[0])
        mask = h.stats.steps[-1].active[0]  # [N]
    assert torch.equal(out_b[:, ~mask], out_a[:, ~mask])
    assert not torch.allclose(out_b[:, mask], out_a[:, mask])


@pytest.mark.parametrize("name", ["sd3", "pixart_sigma", "flux"])
def test_low_precision_runs(name):
    transformer = FAMILIES[name].transformer().to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in INPUTS[name](2).items()}
    with torch.no_grad():
        full = transformer(**inputs)[0]
        with cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
            handle.reset(cfg_pairs=True)
            outs = [transformer(**inputs)[0] for _ in range(4)]
    assert all(out.dtype == torch.bfloat16 and torch.isfinite(out).all() for out in outs)
    # the same input every step: cached tokens equal fresh ones, so warm-up and pruned steps alike give the
    # full model's bfloat16 output bit for bit (gathering, caching and scattering lose no precision)
    assert all(torch.equal(out, full) for out in outs)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_meta_device_runs_the_whole_timeline(name):
    with torch.device("meta"):
        transformer = FAMILIES[name].transformer()
    inputs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in INPUTS[name](2).items()}
    with cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
        handle.reset(cfg_pairs=True)
        for _ in range(4):
            out = transformer(**inputs)[0]
        assert handle.stats.tokens_per_step == [256, 256, 77, 77]
    assert out.device.type == "meta"


def test_transformer_only_resets_when_the_schedule_restarts():
    transformer = FAMILIES["sd3"].transformer()
    inputs = INPUTS["sd3"](2)
    with torch.no_grad(), cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
        for t in (900.0, 500.0, 100.0, 900.0):
            inputs["timestep"] = torch.full((2,), t)
            transformer(**inputs)
        assert [r.step for r in handle.stats.steps] == [0]


def test_flux_true_cfg_keeps_one_state_per_named_call():
    fam = FAMILIES["flux"]
    pipe = fam.pipeline()
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, max_sequence_length=16, output_type="pt",
                  negative_prompt=["blurry", "blurry"], true_cfg_scale=2.0)
    with cat.apply(pipe, CFG) as handle:
        images = pipe(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0), **kwargs).images
        states = handle.runtime.states
        assert set(states) == {"cond", "uncond"}
        for state in states.values():
            assert [r.num_recomputed for r in state.records] == [256] * 4 + [77] * (STEPS - 4)
    assert torch.isfinite(images).all()


def test_unsupported_transformer_lists_the_supported_ones():
    with pytest.raises(TypeError, match="FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel"):
        cat.apply(torch.nn.Linear(2, 2), CFG)


def test_foreign_attention_processor_is_refused_and_nothing_is_left_patched():
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer = FAMILIES["sd3"].transformer()
    transformer.transformer_blocks[1].attn.set_processor(object())
    with pytest.raises(TypeError, match="JointAttnProcessor2_0"):
        cat.apply(transformer, CFG)
    assert isinstance(transformer.transformer_blocks[0].attn.processor, JointAttnProcessor2_0)
    assert not hasattr(transformer, "_diffusers_hook")


def test_sd3_skip_layer_guidance_calls_run_in_full_outside_the_timeline():
    pipe = FAMILIES["sd35_dual_attention"].pipeline()
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, guidance_scale=5.0, output_type="pt",
                  skip_guidance_layers=[1], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)
    with cat.apply(pipe, CFG) as handle:
        images = pipe(["a red circle"], generator=torch.Generator().manual_seed(0), **kwargs).images
        assert handle.stats.tokens_per_step == [256] * 4 + [77] * (STEPS - 4)
    assert torch.isfinite(images).all()
