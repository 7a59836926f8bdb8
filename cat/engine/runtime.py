"""What every hook of one token-engine handle shares: the config, its timeline and the generation state.

The timeline (`config.timeline()`: a module with `begin_step(state, config, grid)` and
`end_step(state, config, out) -> out`) decides per step which tokens run (`state.index`, loaded by
`state.load_plan`) and whether the caches are filled (`state.record`); the hooks, processors and
wrappers only apply that.

Compiled blocks: everything a block reaches while it runs is the same expression in every block
(`processor.caches[runtime.context]`, a wrapper class's `forward`), so torch.compile traces one graph
per step kind and reuses it for every block of the same structure. Per-layer Python values that
dynamo guards on (a per-instance `forward` object as diffusers' `HookRegistry` installs, a cache
looked up by layer name) would give each block graphs of its own.
"""

from __future__ import annotations

from diffusers.hooks.hooks import BaseState, StateManager

from .clock import GenerationClock
from .state import Buffers, GenerationState, LayerCache


class Runtime:
    """The token engine's shared state for one applied handle.

    Pipelines that call the transformer more than once per step (FLUX's true CFG) name each call with
    diffusers' `cache_context`; every named call then has a generation state of its own.

    Each cache context keeps its layer caches and its `Buffers` across generations: a new generation
    refills them in place when its shapes are the same (their storage, which captured CUDA graphs read,
    stays put) and replaces them otherwise.
    """

    def __init__(self, config, clock: GenerationClock):
        self.config = config
        self.timeline = config.timeline()
        self.clock = clock
        self.context: str | None = None
        self.states: dict[str | None, GenerationState] = {}
        self.layers: dict[str, dict[str | None, LayerCache]] = {}
        self.buffers: dict[str | None, Buffers] = {}
        self.gathered_inputs: frozenset[str] = frozenset()  # modules fed the selected rows (see RowsOnly)
        self.heads: set[int] = set()
        self.layouts: set[str] = set()

    def layer_caches(self, name: str) -> dict[str | None, LayerCache]:
        """The caches of module `name`, one `LayerCache` per cache context, for the module to hold.

        The module reads its cache as `caches[runtime.context]`, the same expression in every block;
        each generation state lists the same objects by name in `state.caches`.
        """
        return self.layers.setdefault(name, {})

    def uses(self, heads: int | None = None, layouts: tuple[str, ...] = ()) -> None:
        """What a module of the engine indexes in pruned steps (`StepIndex`): a per-head cache of `heads`
        heads, joint sequences of `layouts`. Called at install."""
        if heads is not None:
            self.heads.add(heads)
        self.layouts.update(layouts)

    @property
    def state(self) -> GenerationState:
        state = self.states.get(self.context)
        if state is None:
            buffers = self.buffers.get(self.context)
            if buffers is None:
                buffers = self.buffers[self.context] = Buffers(tuple(sorted(self.heads)), frozenset(self.layouts))
            state = GenerationState(cfg_pairs=self.clock.cfg_pairs, guidance_scale=self.clock.guidance_scale,
                                    buffers=buffers)
            for name, per_context in self.layers.items():
                state.caches[name] = per_context.setdefault(self.context, LayerCache())
            self.states[self.context] = state
        return state

    def last_state(self) -> GenerationState:
        """The state to report: the conditional call's when calls are named."""
        for key in (None, "cond"):
            if key in self.states:
                return self.states[key]
        return next(iter(self.states.values()), GenerationState(cfg_pairs=self.clock.cfg_pairs))

    def new_generation(self) -> None:
        self.states = {}

    def drop_buffers(self) -> None:
        """Frees every cache and buffer (when the handle is removed)."""
        self.states = {}
        self.buffers = {}
        for per_context in self.layers.values():
            per_context.clear()


class ContextReceiver(StateManager):
    """Receives diffusers' cache context (`transformer.cache_context(name)`) and tells the runtime."""

    def __init__(self, runtime: Runtime):
        super().__init__(BaseState)
        self.runtime = runtime

    def set_context(self, context) -> None:
        self.runtime.context = None if context is None else context.name
