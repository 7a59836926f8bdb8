"""Lean caches and the compiled path: cache_dtype halves the caches; compile traces the blocks once per
step kind and matches eager; pruned steps update static buffers in place and never wait for the host."""

import pytest
import torch

import cat
from cat import testing

PROMPTS = ["a red circle", "a blue square"]
CALLS = {
    "sd3": (testing.tiny_sd3_pipeline, {"max_sequence_length": 8}),
    "pixart": (testing.tiny_pixart_pipeline, {"use_resolution_binning": False, "max_sequence_length": 16,
                                              "clean_caption": False}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _generate(pipe, kwargs, prompts=PROMPTS, steps=8):
    return pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, height=32, width=32, output_type="latent",
                generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images


@pytest.mark.parametrize("family", list(CALLS))
def test_bfloat16_caches_take_half_the_bytes_and_stay_close(family):
    make, kwargs = CALLS[family]
    pipe = make()
    base = _generate(pipe, kwargs)
    config = cat.CATConfig(warmup_steps=4, num_clusters=4)
    with cat.apply(pipe, config) as handle:
        exact = _generate(pipe, kwargs)
        full_bytes = handle.cache_bytes()
    with cat.apply(pipe, cat.CATConfig(warmup_steps=4, num_clusters=4, cache_dtype="bfloat16")) as handle:
        lean = _generate(pipe, kwargs)
        lean_bytes = handle.cache_bytes()
    assert lean_bytes < 0.6 * full_bytes  # the previous output and the reference stay in the model's dtype
    assert torch.isfinite(lean).all()
    assert (lean - exact).abs().max() < 0.05 * exact.abs().max()
    with cat.apply(pipe, cat.CATConfig(keep_ratio=1.0, warmup_steps=4, num_clusters=4, cache_dtype="bfloat16")):
        assert torch.equal(_generate(pipe, kwargs), base)  # no pruning: no cache, bit-exact


def test_fp8_caches_and_bad_compile_modes_are_named_errors():
    pipe = testing.tiny_sd3_pipeline()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="float8_e4m3fn needs a CUDA device"):
            cat.apply(pipe, cat.CATConfig(cache_dtype="float8_e4m3fn"))
    with pytest.raises(ValueError, match="cache_dtype='int8' is invalid"):
        cat.CATConfig(cache_dtype="int8")
    with pytest.raises(ValueError, match="compile_mode='fastest' is invalid"):
        cat.apply(pipe, cat.CATConfig(), compile=True, compile_mode="fastest")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="reduce-overhead"):
            cat.apply(pipe, cat.CATConfig(), compile=True, compile_mode="reduce-overhead")
    assert not hasattr(pipe.transformer, "_diffusers_hook")  # nothing left patched


def test_fp8_keys_and_values_are_scaled_into_range():
    """fp8 caches store keys and values divided by a per-tensor scale: activations far beyond fp8's range
    (448) come back within its precision, and rows written later are clamped, never overflowing."""
    from cat.engine.state import LayerCache
    from cat.engine.tokens import StepIndex, keep_kv, put_heads

    gen = torch.Generator().manual_seed(0)
    key = 3000 * torch.randn(2, 4, 16, 8, generator=gen)  # [B, H, N, d]
    cache = LayerCache()
    keep_kv(cache, "key", key, torch.float8_e4m3fn)
    assert cache.key.dtype == torch.float8_e4m3fn and cache.key_scale.dtype == key.dtype
    back = cache.key.to(key.dtype) * cache.key_scale
    assert ((back - key).abs() <= 0.07 * key.abs() + 1e-3 * key.abs().max()).all()
    index = StepIndex(2, 3, 16, 0, (4,), frozenset(), torch.device("cpu")).load(torch.tensor([[1, 5, 9]]))
    rows = 10 * key.abs().max() * torch.ones(2, 4, 3, 8)  # beyond the scale's range
    out = put_heads(cache.key, index, index.plan, rows, cache.key_scale)
    assert torch.isfinite(out).all() and torch.equal(out[:, :, [1, 5, 9]], torch.full_like(rows, 448) * cache.key_scale)


def _compiled_run(family, layers=3, fullgraph=False):
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    make, kwargs = CALLS[family]
    pipe = make(num_layers=layers) if family == "sd3" else make()
    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounter()
    blocks = pipe.transformer.transformer_blocks
    with cat.apply(pipe, cat.CATConfig(warmup_steps=4, num_clusters=4)) as handle:
        eager = _generate(pipe, kwargs)
        handle.compile(backend=backend, fullgraph=fullgraph)
        compiled = sum(vars(b).get("_compiled_call_impl") is not None for b in blocks)
        first = _generate(pipe, kwargs)
        frames = backend.frame_count
        second = _generate(pipe, kwargs)  # a second generation: nothing new is compiled
        _generate(pipe, kwargs, ["a green tree", "a big cat"])  # nor for other prompts of the same shape
        again = backend.frame_count
    restored = all("_compiled_call_impl" not in vars(b) for b in blocks)
    return dict(eager=eager, first=first, second=second, frames=frames, again=again, restored=restored,
                compiled=compiled, blocks=len(blocks), graph_breaks=dict(counters["graph_break"]))


@pytest.mark.parametrize("family", list(CALLS))
def test_compiled_blocks_match_eager_and_never_recompile_across_generations(family):
    run = _compiled_run(family)
    torch.testing.assert_close(run["first"], run["eager"], rtol=1e-4, atol=1e-4)
    assert torch.equal(run["first"], run["second"])
    assert run["again"] == run["frames"]  # no recompiles across steps of a kind, generations or prompts
    # full and pruned steps, for all blocks (the cache-filling step runs eagerly: the caches are allocated
    # outside the graphs)
    assert run["compiled"] >= 2 and run["frames"] == 2
    assert run["restored"]


def test_compiled_blocks_compile_one_graph_per_step_kind():
    """Every block of one structure shares one graph per step kind. SD3's last block (no text output) is
    the only one of its structure and stays eager; the three others are compiled."""
    run = _compiled_run("sd3", layers=4)
    assert run["compiled"] == 3
    assert run["frames"] == 2 and run["again"] == run["frames"]


@pytest.mark.parametrize("family", list(CALLS))
def test_pruned_step_compiles_to_one_graph_without_breaks(family):
    """fullgraph=True over the pruned steps of a bare transformer: one graph for all blocks, no break."""
    from .compiled import assert_pruned_steps_are_one_graph
    from .families import INPUTS

    make = {"sd3": lambda: testing.tiny_sd3_transformer(num_layers=3), "pixart": testing.tiny_pixart_transformer}
    name = {"sd3": "sd3", "pixart": "pixart_sigma"}[family]
    transformer, inputs = make[family](), INPUTS[name](2)
    assert_pruned_steps_are_one_graph(transformer, inputs, cat.CATConfig(warmup_steps=2, num_clusters=4), 2)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_plan_caches_and_previous_output_stay_in_place_and_outputs_are_never_rewritten(family):
    """Pruned steps update the plan, the layer caches and the previous output in their buffers; what the
    transformer handed to the pipeline stays as it was (FLUX's tokens are the output itself)."""
    from .families import FAMILIES

    fam = FAMILIES[family]
    pipe = fam.pipeline()
    seen = []

    def look(module, args, output):
        state = handle.runtime.state
        sample = output[0] if isinstance(output, tuple) else output.sample
        caches = [t for c in state.caches.values() for t in (c.key, c.value, c.out) if t is not None]
        ptrs = None
        if state.plan is not None:
            ptrs = (state.plan.data_ptr(), state.prev_out.data_ptr(), [t.data_ptr() for t in caches])
        seen.append((ptrs, sample, sample.clone()))

    config = cat.CATConfig(warmup_steps=3, num_clusters=4)
    with cat.apply(pipe, config) as handle:
        hook = pipe.transformer.register_forward_hook(look)
        pipe(PROMPTS, num_inference_steps=7, guidance_scale=5.0, height=32, width=32, output_type="latent",
             generator=torch.Generator().manual_seed(0), **fam.pipeline_kwargs)
        hook.remove()
    pruned = [ptrs for ptrs, _, _ in seen if ptrs is not None]
    assert len(pruned) == 4 and all(p == pruned[0] for p in pruned)
    assert len(pruned[0][2]) > 0
    for _, sample, copy in seen:
        assert torch.equal(sample, copy)


class _HostWatch:
    """Records what a step does on the host: scalar reads, data-dependent shapes, CPU tensors handed to
    an operator (host-to-device copies) and `torch.tensor` calls (from Python data)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        self.seen = []
        watch = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                leaves = torch.utils._pytree.tree_leaves((args, kwargs))
                name = str(func)
                if ("_local_scalar_dense" in name or "nonzero" in name
                        or any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in leaves)):
                    watch.seen.append(name)
                return func(*args, **kwargs)

        self.mode = Mode()

    def __enter__(self):
        from unittest import mock

        tensor = torch.tensor

        def spy(*args, **kwargs):
            self.seen.append("torch.tensor")
            return tensor(*args, **kwargs)

        self.patch = mock.patch.object(torch, "tensor", spy)
        self.patch.__enter__()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.patch.__exit__(*exc)


@pytest.mark.parametrize("name, config", [
    ("sd3", cat.CATConfig(warmup_steps=2, num_clusters=4)),
    ("pixart_sigma", cat.CATConfig(warmup_steps=2, num_clusters=4)),
    ("flux", cat.CATConfig(warmup_steps=2, num_clusters=4)),
    ("sd3", cat.CATConfig(warmup_steps=2, num_clusters=4, policy="no_cluster")),
    ("sd3", cat.CATConfig(warmup_steps=2, num_clusters=4, policy="random")),
    ("sd3", cat.CATFORAConfig(warmup_steps=2, num_clusters=4)),
    ("sd3", cat.METHODS["cat_budget"](warmup_steps=2, num_clusters=4, forecast=1.0)),
    ("sd3", cat.RASConfig(warmup_steps=2, error_reset_steps=())),
])
def test_pruned_steps_do_not_synchronise_with_the_host(name, config):
    """Whole pruned steps (timeline and blocks) on the meta device, where any host read would fail or show."""
    from .families import FAMILIES, INPUTS

    with torch.device("meta"):
        transformer = FAMILIES[name].transformer()
    inputs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in INPUTS[name](2).items()}
    with cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=True)
        for _ in range(config.warmup_steps + 1):
            transformer(**inputs)
        with _HostWatch() as watch:
            for _ in range(2):
                transformer(**inputs)
        assert {r.phase for r in handle.stats.steps[-2:]} <= {"pruned", "reuse"}
    assert watch.seen == []


@pytest.mark.parametrize("family", ["sd3", "sd35_dual_attention", "pixart"])
def test_norms_in_front_of_pruned_modules_run_on_the_selected_rows_only(family, monkeypatch):
    """A pruned step normalises only the tokens it recomputes (`row_norms`): the norms see K rows, the
    images are bit-identical to picking the rows after normalising every token, and a norm whose
    consumer is not pruned keeps every row."""
    import dataclasses

    from cat.families import base

    make, kwargs = CALLS["pixart" if family == "pixart" else "sd3"]
    pipe = make(qk_norm="rms_norm", dual_attention_layers=(0,)) if family == "sd35_dual_attention" else make()
    transformer = pipe.transformer
    spec = base.family_for(transformer)
    norms = spec.row_norms(transformer)
    assert len(norms) == 2 * len(transformer.transformer_blocks)

    def generate(config):
        """Images, and the rows each norm saw per step."""
        rows = {}
        hooks = [m.register_forward_pre_hook(lambda m, a, name=n: rows.setdefault(name, []).append(a[0].shape[1]))
                 for n, m, _ in norms]
        with cat.apply(pipe, config):
            images = _generate(pipe, kwargs)
        for h in hooks:
            h.remove()
        return images, rows

    config = cat.CATConfig(warmup_steps=4, num_clusters=4)
    gathered, rows = generate(config)
    tokens = rows[norms[0][0]][0]
    k = cat.token_schedule(config, 8, tokens)[-1]
    assert all(r == [tokens] * 4 + [k] * 4 for r in rows.values()), rows
    for cls in spec.transformer_classes:
        monkeypatch.setitem(base._REGISTRY, cls, dataclasses.replace(spec, row_norms=lambda t: []))
    assert torch.equal(generate(config)[0], gathered)
    monkeypatch.undo()
    _, rows = generate(dataclasses.replace(config, prune_ff=False))
    for name, _, consumers in norms:
        assert (min(rows[name]) < tokens) == all(c.endswith(("attn", "attn1", "attn2")) for c in consumers), name


def test_remove_puts_back_the_recompile_limits_compile_raised():
    """Compiling a method's blocks raises dynamo's process-wide recompile limits for many-block models;
    `remove()` restores them, as every other change."""
    config = torch._dynamo.config
    before = (config.recompile_limit, config.accumulated_recompile_limit)
    config.recompile_limit, config.accumulated_recompile_limit = 1, 1
    try:
        transformer = testing.tiny_sd3_transformer(num_layers=4)
        with cat.apply(transformer, cat.FORAConfig()) as handle:
            handle.compile(backend="eager")
            assert config.recompile_limit > 1 and config.accumulated_recompile_limit > 1
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (1, 1)
    finally:
        config.recompile_limit, config.accumulated_recompile_limit = before
