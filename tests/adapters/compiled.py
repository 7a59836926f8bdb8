"""A check shared by the compile tests: a method's pruned steps on a bare transformer compile to one graph."""

import torch

import cat


def assert_pruned_steps_are_one_graph(transformer, inputs, config, pruned_steps: int, **reset) -> None:
    """After `config`'s warm-up, `pruned_steps` pruned steps run eagerly and then under `handle.compile`
    (fullgraph=True): one compiled frame, no graph break, and the same outputs (to float tolerance).
    `reset` goes to `handle.reset` (e.g. num_steps for a schedule)."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    outs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        backend = CompileCounter()
        with torch.no_grad(), cat.apply(transformer, config) as handle:
            handle.reset(cfg_pairs=True, **reset)
            for _ in range(config.warmup_steps):
                transformer(**inputs)
            if compiled:
                handle.compile(backend=backend, fullgraph=True)
            outs.append([transformer(**inputs)[0] for _ in range(pruned_steps)])
            assert [r.phase for r in handle.stats.steps[-pruned_steps:]] == ["pruned"] * pruned_steps
    assert backend.frame_count == 1
    assert not counters["graph_break"]
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
