"""Invariants of the SD3 adapter on tiny random pipelines built in the test (CPU, no network)."""

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

import cat
from cat.testing import tiny_sd3_pipeline, tiny_sd3_transformer

STEPS = 10
CFG = cat.CATConfig(keep_ratio=0.3, warmup_steps=4, num_clusters=8)
VARIANTS = {
    "sd3": {},
    "qk_norm": {"qk_norm": "rms_norm"},
    "sd35_dual": {"qk_norm": "rms_norm", "dual_attention_layers": (0,)},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pipe(request):
    return tiny_sd3_pipeline(seed=0, **VARIANTS[request.param])


def generate(pipe, prompts=("a red circle", "a blue square"), steps=STEPS, guidance=5.0, **kwargs):
    kwargs.setdefault("height", 32)
    kwargs.setdefault("width", 32)
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kwargs).images


def _module_state(transformer):
    return {
        name: (dict(vars(m)), getattr(m, "processor", None))
        for name, m in transformer.named_modules()
    }


def test_pruning_disabled_is_bit_identical(pipe):
    base = generate(pipe)
    with cat.apply(pipe, cat.CATConfig(keep_ratio=1.0, warmup_steps=4, num_clusters=8)):
        assert torch.equal(generate(pipe), base)
    with cat.apply(pipe, cat.CATConfig(warmup_steps=STEPS, num_clusters=8)):
        assert torch.equal(generate(pipe), base)


def test_apply_generate_remove_restores_exactly(pipe):
    transformer = pipe.transformer
    before = _module_state(transformer)
    base = generate(pipe)
    handle = cat.apply(pipe, CFG)
    pruned = generate(pipe)
    assert not torch.equal(pruned, base)
    assert handle.stats.tokens_per_step == [256] * 4 + [77] * (STEPS - 4)
    handle.remove()
    assert torch.equal(generate(pipe), base)
    after = _module_state(transformer)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name][0].keys() == before[name][0].keys(), name
        assert after[name][1] is before[name][1], name
    assert "encode_prompt" not in vars(pipe)


def test_two_identical_calls_give_identical_images(pipe):
    with cat.apply(pipe, CFG):
        assert torch.equal(generate(pipe), generate(pipe))


def _transformer_inputs(transformer, batch=2, h=32, w=32, text=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, h, w, generator=gen),
        encoder_hidden_states=torch.randn(batch, text, 32, generator=gen),
        pooled_projections=torch.randn(batch, 64, generator=gen),
        timestep=torch.full((batch,), 500.0),
        return_dict=False,
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cache_filling_full_step_is_bit_identical(variant):
    """The full step that fills every cache runs through CAT's own processor: same bits as the original."""
    transformer = tiny_sd3_transformer(**VARIANTS[variant])
    inputs = _transformer_inputs(transformer)
    with torch.no_grad():
        ref = transformer(**inputs)[0]
        with cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
            handle.reset(cfg_pairs=True)
            outs = [transformer(**inputs)[0] for _ in range(2)]
            assert [r.phase for r in handle.stats.steps] == ["reference", "cluster"]
    for out in outs:
        assert torch.equal(out, ref)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cfg_pairs", [True, False])
def test_fresh_caches_give_the_full_computation(variant, cfg_pairs):
    """A pruned step whose caches come from the same input equals the full model (up to float reassociation)."""
    transformer = tiny_sd3_transformer(**VARIANTS[variant])
    inputs = _transformer_inputs(transformer, batch=4)
    with torch.no_grad():
        ref = transformer(**inputs)[0]
        config = cat.CATConfig(keep_ratio=0.3, warmup_steps=2, num_clusters=4)
        with cat.apply(transformer, config) as handle:
            handle.reset(cfg_pairs=cfg_pairs)
            for _ in range(3):
                out = transformer(**inputs)[0]
            steps = handle.stats.steps
    assert steps[-1].phase == "pruned" and steps[-1].num_recomputed == config.num_kept(256)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    # and the selected tokens did go through the pruned path
    assert steps[-1].active.sum(dim=1).tolist() == [77] * (2 if cfg_pairs else 4)


def test_pruned_tokens_really_are_recomputed_from_the_input():
    """With a changed input, the selected tokens follow the new input and the others keep the old output."""
    transformer = tiny_sd3_transformer()
    a = _transformer_inputs(transformer, seed=0)
    b = _transformer_inputs(transformer, seed=1)
    with torch.no_grad():
        with cat.apply(transformer, cat.CATConfig(keep_ratio=0.3, warmup_steps=2, num_clusters=4)) as handle:
            handle.reset(cfg_pairs=True)
            transformer(**a)
            out_a = transformer(**a)[0]
            out_b = transformer(**b)[0]
            mask = handle.stats.steps[-1].active  # [1, N]
    spec = cat.adapters.spec_for(transformer)
    ta, tb = spec.to_tokens(transformer, out_a), spec.to_tokens(transformer, out_b)  # [B, N, D]
    unselected = ~mask[0]
    assert torch.equal(tb[:, unselected], ta[:, unselected])
    assert not torch.allclose(tb[:, mask[0]], ta[:, mask[0]])


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_batches_sizes_and_images_per_prompt(pipe, guidance):
    prompts = ("a red circle", "a blue square", "a green tree")
    with cat.apply(pipe, CFG) as handle:
        images = generate(pipe, prompts, guidance=guidance, height=32, width=48, num_images_per_prompt=2)
        stats = handle.stats
    assert images.shape == (6, 3, 32, 48)
    assert stats.grid == (16, 24) and stats.cfg_pairs is (guidance > 1)
    pruned = [r for r in stats.steps if r.phase == "pruned"]
    assert len(pruned) == STEPS - 4
    k = CFG.num_kept(16 * 24)
    for rec in pruned:
        assert rec.active.shape == (6, 384)
        assert rec.active.sum(dim=1).tolist() == [k] * 6
    selections = {tuple(row.nonzero().flatten().tolist()) for row in pruned[0].active}
    assert len(selections) > 1, "every prompt should get its own selection"


def test_low_precision_runs():
    transformer = tiny_sd3_transformer().to(torch.bfloat16)
    inputs = _transformer_inputs(transformer)
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) else v for k, v in inputs.items()}
    with torch.no_grad(), cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
        handle.reset(cfg_pairs=True)
        for _ in range(4):
            out = transformer(**inputs)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_meta_device_runs_the_whole_timeline():
    with torch.device("meta"):
        transformer = tiny_sd3_transformer()
    inputs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in _transformer_inputs(transformer).items()}
    with cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
        handle.reset(cfg_pairs=True)
        for _ in range(4):
            out = transformer(**inputs)[0]
        assert handle.stats.tokens_per_step == [256, 256, 77, 77]
    assert out.device.type == "meta"


def test_transformer_only_resets_when_the_schedule_restarts():
    transformer = tiny_sd3_transformer()
    inputs = _transformer_inputs(transformer)
    with torch.no_grad(), cat.apply(transformer, cat.CATConfig(warmup_steps=2, num_clusters=4)) as handle:
        for t in (900.0, 500.0, 100.0, 900.0):
            inputs["timestep"] = torch.full((2,), t)
            transformer(**inputs)
        assert [r.step for r in handle.stats.steps] == [0]


def test_applying_twice_raises(pipe):
    with cat.apply(pipe, CFG):
        with pytest.raises(RuntimeError, match="already applied"):
            cat.apply(pipe, CFG)
    cat.apply(pipe, CFG).remove()


def test_unsupported_transformer_lists_the_supported_ones():
    with pytest.raises(TypeError, match="SD3Transformer2DModel"):
        cat.apply(torch.nn.Linear(2, 2), CFG)
    assert "SD3Transformer2DModel" in cat.supported_models()


def test_foreign_attention_processor_is_refused_and_nothing_is_left_patched():
    transformer = tiny_sd3_transformer()
    transformer.transformer_blocks[1].attn.set_processor(object())
    with pytest.raises(TypeError, match="JointAttnProcessor2_0"):
        cat.apply(transformer, CFG)
    assert isinstance(transformer.transformer_blocks[0].attn.processor, JointAttnProcessor2_0)
    assert not hasattr(transformer, "_diffusers_hook")


def test_too_many_clusters_for_the_image_is_a_clear_error(pipe):
    with cat.apply(pipe, cat.CATConfig(num_clusters=300, warmup_steps=4)):
        with pytest.raises(ValueError, match="num_clusters=300"):
            generate(pipe, steps=6)
