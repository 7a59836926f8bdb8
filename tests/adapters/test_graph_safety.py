"""What CUDA graphs (`compile_mode="reduce-overhead"`) need from the token engine, checked on the CPU.

A captured graph reads and writes its static inputs where they are, and its outputs live in a pool the
next replay overwrites. So every tensor the engine keeps across steps (layer caches, the pruned steps'
index tensors, the previous output, the forecast coefficients) must be allocated outside the compiled
blocks, keep its storage from the first cache-filling step to the last step (and across generations of
the same shape), and be marked as a static address; and the compiled pruned step must take nothing else
across calls but the block's own arguments.
"""

import pytest
import torch

import cat
from cat import testing

from .families import FAMILIES, INPUTS

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 7
CAT = dict(warmup_steps=3, num_clusters=4)
METHODS = {
    "cat": cat.CATConfig(**CAT),
    "cat_random": cat.CATConfig(**CAT, policy="random"),
    "cat_fora": cat.CATFORAConfig(**CAT),
    "cat_budget": cat.METHODS["cat_budget"](**CAT, schedule_slope=1.0, schedule_block=2, forecast=1.0),
    "ras": cat.RASConfig(warmup_steps=2, error_reset_steps=(4,)),  # fills the caches again at step 3
}


def kept_tensors(handle) -> dict[str, torch.Tensor]:
    """Every tensor the engine keeps across steps, by a name that says where it lives."""
    runtime = handle.runtime
    out = {}
    for context, buffers in runtime.buffers.items():
        out[f"{context}.prev_out"] = buffers.prev_out
        out[f"{context}.rho"] = buffers.rho
        for k, index in buffers.indexes.items():
            for i, t in enumerate(index.tensors()):
                out[f"{context}.index{k}.{i}"] = t
    for name, per_context in runtime.layers.items():
        for context, cache in per_context.items():
            for field in ("key", "value", "out", "prev"):
                out[f"{context}.{name}.{field}"] = getattr(cache, field)
    return {k: v for k, v in out.items() if v is not None}


def watch_storage(transformer, inputs, config, generations=2, cfg_pairs=True):
    """The storage address of every kept tensor at every step after the first cache-filling one."""
    seen = []
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=cfg_pairs, num_steps=STEPS)
        for _ in range(generations * STEPS):
            transformer(**inputs)
            kept = kept_tensors(handle)
            if any(".out" in name for name in kept):
                seen.append({name: t.data_ptr() for name, t in kept.items()})
                assert all(getattr(t, "_dynamo_static_input_type", None) for t in kept.values()), \
                    [name for name, t in kept.items() if not hasattr(t, "_dynamo_static_input_type")]
        phases = [r.phase for r in handle.stats.steps]
    return seen, phases


def assert_in_place(seen: list[dict[str, int]], label: str) -> None:
    """Each kept tensor has one address from the step it first appears at to the last."""
    first = {}
    for ptrs in seen:
        for tensor, ptr in ptrs.items():
            assert first.setdefault(tensor, ptr) == ptr, f"{label}: {tensor} moved"
    assert any(".index" in name for name in first) and any(".out" in name for name in first)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_kept_tensor_keeps_its_storage_through_generations(name):
    transformer = testing.tiny_sd3_transformer(num_layers=2)
    seen, phases = watch_storage(transformer, INPUTS["sd3"](2), METHODS[name])
    assert phases.count("pruned") >= 2
    assert_in_place(seen, name)


@pytest.mark.parametrize("family", ["pixart_sigma", "flux", "sd35_dual_attention"])
def test_every_family_keeps_its_caches_in_place(family):
    spec = FAMILIES[family]
    seen, _ = watch_storage(spec.transformer(), INPUTS[family](2), METHODS["cat"], cfg_pairs=spec.has_cfg)
    assert_in_place(seen, family)


def _graphs(transformer, inputs, config, generations=2):
    """The graphs dynamo compiles for the method's blocks over `generations` generations, per generation."""
    from torch._dynamo.utils import counters

    graphs: list = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    counters.clear()
    per_generation = []
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        handle.compile(backend=backend, fullgraph=True)
        handle.reset(cfg_pairs=True, num_steps=STEPS)
        for _ in range(generations):
            for _ in range(STEPS):
                transformer(**inputs)
            per_generation.append(len(graphs))
    assert not counters["graph_break"]
    return graphs, per_generation


@pytest.mark.parametrize("name", list(METHODS))
def test_no_recompile_after_the_first_generation(name):
    """One graph per kind of compiled step (full, pruned at each budget, reuse), none added later; the
    cache-filling steps run eagerly (the caches are allocated outside the graphs)."""
    transformer = testing.tiny_sd3_transformer(num_layers=3)
    graphs, per_generation = _graphs(transformer, INPUTS["sd3"](2), METHODS[name])
    assert per_generation[0] == per_generation[1]
    kinds = {"cat_fora": 3, "cat_budget": 3}.get(name, 2)  # + reuse steps; + a second budget
    assert per_generation[0] == kinds


@pytest.mark.parametrize("family", ["sd3", "pixart_sigma", "flux"])
def test_a_compiled_pruned_step_writes_only_static_inputs(family):
    """In the pruned step's graph every input but the block's own arguments is a static address (weights,
    caches, index tensors), and every input written in place is one of the caches."""
    transformer = {"sd3": lambda: testing.tiny_sd3_transformer(num_layers=3)}.get(family, FAMILIES[family].transformer)()
    graphs, _ = _graphs(transformer, INPUTS[family](2), METHODS["cat"], generations=1)
    pruned = [gm for gm in graphs if any("index" in n.name for n in gm.graph.find_nodes(op="placeholder"))]
    assert pruned
    for gm in pruned:
        static = {}
        for node in gm.graph.find_nodes(op="placeholder"):
            static[node] = node.meta.get("tensor_dict", {}).get("_dynamo_static_input_type")
            source = node._dynamo_source
            while getattr(source, "base", None) is not None:  # an argument's item (FLUX's rotary tuple)
                source = source.base
            is_argument = type(source).__name__ == "LocalSource" and source.local_name != "self"
            assert static[node] or is_argument, f"{node.name} is neither static nor an argument of the block"
        written = [node.args[0] for node in gm.graph.nodes
                   if node.op in ("call_method", "call_function") and str(node.target).endswith("_")
                   and not str(node.target).startswith("__") and node.args and node.args[0] in static]
        assert written and all(static[n] and "caches" in n.name for n in written)


def test_cuda_graphs_are_refused_for_methods_whose_caches_are_graph_outputs():
    pipe = testing.tiny_sd3_pipeline()
    for config in (cat.FORAConfig(), cat.METHODS["toca"](), cat.METHODS["taylorseer"](), cat.METHODS["fbcache"]()):
        with pytest.raises(ValueError, match=rf"reduce-overhead.*refused for '{config.name}'"):
            cat.apply(pipe, config, compile=True, compile_mode="reduce-overhead")
    assert not hasattr(pipe.transformer, "_diffusers_hook")


def test_reduce_overhead_marks_a_graph_step_at_every_transformer_call(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    transformer = testing.tiny_sd3_transformer(num_layers=3)
    inputs = INPUTS["sd3"](2)
    undo = cat.compile_blocks(transformer, "reduce-overhead", backend="eager")
    with torch.no_grad():
        transformer(**inputs)
        transformer(**inputs)
    for fn in reversed(undo):
        fn()
    with torch.no_grad():
        transformer(**inputs)
    assert len(marks) == 2
