"""What a step asks of the host: aten operators dispatched and host synchronisations per transformer call.

On a GPU an eager pruned step costs kernel launches and host synchronisations as much as MACs: a step
that dispatches more operators than the full one for a third of its work is host-bound. Counted here
on a 12-layer tiny SD3 (hidden 32, 16x16 image tokens, 7 text tokens, CFG batch 2), per transformer
call of a bare transformer (hooks, timeline, selection and blocks), with a `TorchDispatchMode`:

- operators: every aten operator the mode sees except views (`OpOverload.is_view`: no kernel, no data),
  the rule of the review that filed issue 32;
- host synchronisations: operators that read a tensor on the host (`aten._local_scalar_dense`, behind
  `.item()`, `float()`, `int()`, `.tolist()`; `aten.equal`; `aten.is_nonzero`), operators whose output
  shape depends on data (`aten.nonzero`, `aten.masked_select`), and tensors made from host data
  (`aten.lift_fresh`, behind `torch.tensor`). CPU tensors handed to a step (host-to-device copies) are
  caught on the meta device (`test_speed_features.py`).

Measured before the lean step (commit 280c156) and with it, per transformer call (full step: 688
operators, no synchronisation; CAT's settings below, 2 generations of 6 steps):

| method | pruned step, before | syncs, before | pruned step, now | syncs, now | clustering step syncs, before / now |
|---|---|---|---|---|---|
| cat | 1016 (1.48x) | 5 | 841 (1.22x) | 0 | 21 / 2 |
| cat, policy=random | 923 (1.34x) | 1 | 777 (1.13x) | 0 | 2 / 1 |
| cat_fora, pruned / reuse steps | 1016 / 817 | 5 / 1 | 841 / 625 | 0 | 21 / 2 |
| cat_budget, schedule_slope=1 | 992-1017 | 5 | 817-849 (1.23x) | 0 | 24 / 5 |
| cat_budget, forecast=1 | 1242 (1.81x) | 5 | 971 (1.41x) | 0 | 21 / 2 |
| ras | 914-925 (1.34x) | 1 | 770-788 (1.15x) | 0 | - |
| toca, partial steps | 698-905 (1.32x) | 47 | 728-743 (1.08x) | 0 | - |
| fbcache, skipped steps | 98 | 2 | 97 | 1 | - |

The first pruned step at a budget adds 8 operators (its index buffers are built, once); the clustering
step reads the host once per 20 k-means iterations and copies its quotas from the host. The forecast of `cat_budget` is elementwise work
on every token of every pruned module (out + rho (out - prev), and the move of the older output): five
operators per module more that eager mode cannot fuse (compiled, inductor fuses them). FBCache's skip
decision compares a residual on the host: one read per step, inherent to a dynamic skip.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cat
from cat import testing

from .families import INPUTS

LAYERS = 12
STEPS = 6
WARMUP = 3
RATIO = 1.25  # a pruned step dispatches at most this many times the full step's operators
SYNCS = ("aten._local_scalar_dense", "aten.equal", "aten.is_nonzero", "aten.nonzero", "aten.masked_select",
         "aten.lift_fresh")
CAT = dict(warmup_steps=WARMUP, num_clusters=4)
LEAN = {
    "cat": cat.CATConfig(**CAT),
    "cat_random": cat.CATConfig(**CAT, policy="random"),
    "cat_fora": cat.CATFORAConfig(**CAT),
    "cat_budget": cat.METHODS["cat_budget"](**CAT, schedule_slope=1.0, schedule_block=1),
    "ras": cat.RASConfig(warmup_steps=WARMUP, error_reset_steps=()),
    "toca": cat.METHODS["toca"](),
}

pytestmark = pytest.mark.usefixtures("one_thread")


class Dispatches(TorchDispatchMode):
    """Counts the aten operators dispatched (views excluded) and, among them, the host synchronisations."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not func.is_view:
            self.ops += 1
        if name.startswith(SYNCS):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def count(fn) -> Dispatches:
    with Dispatches() as mode:
        fn()
    return mode


@pytest.fixture(scope="module")
def model():
    """The tiny SD3 transformer, its inputs (CFG batch 2) and the full step's operator count."""
    transformer = testing.tiny_sd3_transformer(num_layers=LAYERS)
    inputs = INPUTS["sd3"](2)
    with torch.no_grad():
        full = count(lambda: transformer(**inputs))
    assert not full.syncs
    return transformer, inputs, full.ops


def steps(transformer, inputs, config, generations: int = 1) -> list[tuple[str, Dispatches]]:
    """(phase, counts) of the transformer calls of `generations` generations of STEPS steps that are not
    full steps (those run uncounted: the full model's count is the reference)."""
    out = []
    with torch.no_grad(), cat.apply(transformer, config) as handle:
        handle.reset(cfg_pairs=True, num_steps=STEPS)
        for step in range(generations * STEPS):
            if step % STEPS < WARMUP - 1:
                transformer(**inputs)
                continue
            counts = count(lambda: transformer(**inputs))
            out.append((handle.stats.steps[-1].phase, counts))
    return out


@pytest.mark.parametrize("name", list(LEAN))
def test_a_pruned_step_dispatches_little_more_than_a_full_one_and_never_waits_for_the_host(model, name):
    transformer, inputs, full = model
    seen = steps(transformer, inputs, LEAN[name], generations=2 if name == "cat" else 1)
    accelerated = [(phase, c) for phase, c in seen if phase in ("pruned", "reuse", "partial")]
    assert len(accelerated) >= STEPS - WARMUP
    for phase, c in accelerated:
        assert c.ops <= RATIO * full, f"{name} {phase} step: {c.ops} operators, full step {full}"
        assert c.syncs == [], f"{name} {phase} step reads the host: {c.syncs}"
    for phase, c in seen:
        assert len(c.syncs) <= (20 if phase == "cluster" else 0), (name, phase, c.syncs)


def test_the_forecast_costs_its_elementwise_work_only(model):
    transformer, inputs, full = model
    config = cat.METHODS["cat_budget"](**CAT, forecast=1.0)
    pruned = [c for phase, c in steps(transformer, inputs, config) if phase == "pruned"]
    # per pruned module (two per block): the older output moved (2 operators) and out + rho (out - prev)
    # (3); per step: rho (about 16)
    assert pruned and all(c.ops <= RATIO * full + 5 * 2 * LAYERS + 16 and not c.syncs for c in pruned)


def test_first_block_cache_reads_the_host_once_per_step(model):
    transformer, inputs, _ = model
    seen = steps(transformer, inputs, cat.METHODS["fbcache"]())
    assert seen and all(len(c.syncs) <= 1 for _, c in seen)


def test_the_clock_of_a_bare_transformer_reads_no_timestep_when_the_schedule_length_is_known(model):
    """Generations restart after `num_steps` calls, without reading the timestep tensor."""
    transformer, inputs, _ = model
    with torch.no_grad(), cat.apply(transformer, LEAN["cat"]) as handle:
        n = WARMUP + 1  # a schedule the warm-up does not cover (a longer warm-up is refused at the first call)
        handle.reset(cfg_pairs=True, num_steps=n)
        counts = [count(lambda: transformer(**inputs)) for _ in range(2 * n + 1)]
        assert [r.step for r in handle.stats.steps] == [0]  # the last call started a third generation
    # no call reads the host but the clustering step (the warm-up's last), which reads its k-means (see above)
    assert all(c.syncs == [] for i, c in enumerate(counts) if i % n != WARMUP - 1)
