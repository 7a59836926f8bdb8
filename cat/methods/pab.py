"""Pyramid Attention Broadcast: Zhao et al. 2024, "Real-Time Video Generation with Pyramid Attention Broadcast",
arXiv 2408.12588 (code: github.com/NUS-HPC-AI-Lab/VideoSys), through diffusers' own
`apply_pyramid_attention_broadcast` (`diffusers/hooks/pyramid_attention_broadcast.py`).

Each self-attention module runs at every `spatial_range`-th of its calls and broadcasts (returns) its last output
in between, while the step's timestep lies strictly inside `spatial_timesteps`; cross-attention modules (PixArt's
`attn2`) do the same with `cross_range` and `cross_timesteps`. The feed-forwards always run. Outside the range,
at a module's first call and during the first `warmup_steps` steps, every attention runs.

diffusers' hook asks a callback for the current timestep. SD3 and PixArt pipelines set none (no
`current_timestep`), so the handle reads the scheduler's timesteps once per generation, at its first transformer
call (one host sync there, none in later steps), and gives the step's timestep from the host copy; a bare
transformer's calls give their own `timestep` argument (a host read per call). The attention modules are
the family's ATTENTION ones (`cat/families/`): SD3's joint `attn` (and SD3.5's `attn2`), PixArt's `attn1`
(self) and `attn2` (cross), FLUX's `attn` of both block kinds. The shared plumbing (generation resets, exact
removal, a skip-layer call that bypasses the hooks) is `cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..engine.clock import call_timestep
from ..engine.diffusers_cache import CONTEXT, DiffusersCacheHandle
from ..engine.stats import MethodStats, StepRecord
from ..families import ATTENTION, family_for
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register


@register
@dataclass(frozen=True)
class PABConfig(MethodConfig):
    """Pyramid Attention Broadcast. Defaults: the authors' MMDiT setting below (CogVideoX's). `spatial_range=1`
    with `cross_range` None or 1 broadcasts nothing: bit-exact.

    Attributes:
        spatial_range: a self-attention runs at every N-th call and broadcasts in between (diffusers'
            `spatial_attention_block_skip_range`; VideoSys's `spatial_range`).
        spatial_timesteps: (low, high): self-attention broadcasts only at timesteps strictly inside
            (`spatial_attention_timestep_skip_range`; VideoSys's `spatial_threshold`).
        cross_range: the same for cross-attention (None: never broadcast; PixArt's `attn2` only).
        cross_timesteps: (low, high) for cross-attention.
        warmup_steps: leading steps whose attentions always run (1: the hook's own first call; a larger warm-up
            reports those steps' timesteps as outside every range).

    The authors' setting per architecture, `PABConfig.authors(family, num_steps)` (NUS-HPC-AI-Lab/VideoSys
    @4cce477; no image model: MMDiT follows their CogVideoX setting, the nearest (one joint attention over text
    and image tokens, no cross-attention, as SD3's and FLUX's blocks); PixArt their Latte setting, the nearest
    (Latte's blocks are PixArt-alpha's: self-attention, cross-attention, AdaLN-single)). Their temporal
    attentions have no counterpart in an image model. Timesteps are in the schedulers' 0-1000 units, as theirs.

    | field | MMDiT: `videosys/pipelines/cogvideox/pipeline_cogvideox.py` `CogVideoXPABConfig` | PixArt: `videosys/pipelines/latte/pipeline_latte.py` `LattePABConfig` |
    |---|---|---|
    | spatial_range | 2 (`spatial_range`) | 2 |
    | spatial_timesteps | (100, 850) (`spatial_threshold`) | (100, 800) |
    | cross_range | None (`cross_broadcast` off) | 6 (`cross_range`) |
    | cross_timesteps | (100, 800) (unused) | (100, 800) (`cross_threshold`) |
    | warmup_steps | 1 (`videosys/core/pab/pab_mgr.py` `PABManager.if_broadcast_*`: the count starts at 0, which computes) | 1 |

    The rule is diffusers' and theirs alike: a module's count of calls, broadcast when `count % range != 0`
    inside the timestep range (`if_broadcast_spatial` / `if_broadcast_cross`; diffusers'
    `PyramidAttentionBroadcastHook.new_forward`, which also computes while it has nothing cached).
    Where ours deviates: VideoSys's Latte setting also broadcasts the feed-forward (MLP) outputs of blocks 0-4 at
    five timesteps (`mlp_broadcast`), which diffusers' hook does not implement; ours broadcasts attention only.
    """

    name: ClassVar[str] = "pab"
    spatial_range: int = 2
    spatial_timesteps: tuple[float, float] = (100.0, 850.0)
    cross_range: int | None = None
    cross_timesteps: tuple[float, float] = (100.0, 800.0)
    warmup_steps: int = 1

    def __post_init__(self):
        check(is_int(self.spatial_range) and self.spatial_range >= 1, self, "spatial_range", "an integer >= 1")
        check(self.cross_range is None or (is_int(self.cross_range) and self.cross_range >= 1), self,
              "cross_range", "None (no cross-attention broadcast) or an integer >= 1")
        for name in ("spatial_timesteps", "cross_timesteps"):
            value = getattr(self, name)
            if isinstance(value, Sequence) and not isinstance(value, str) and all(is_num(v) for v in value):
                object.__setattr__(self, name, value := tuple(float(v) for v in value))
            check(isinstance(value, tuple) and len(value) == 2 and all(math.isfinite(v) for v in value)
                  and value[0] < value[1], self, name, "a pair (low, high) of finite timesteps with low < high")
        check_warmup(self)

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their CogVideoX setting on MMDiT, their Latte setting on PixArt (see the class docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            return {"spatial_range": 2, "spatial_timesteps": (100.0, 850.0), "cross_range": None,
                    "cross_timesteps": (100.0, 800.0), "warmup_steps": 1}
        return {"spatial_range": 2, "spatial_timesteps": (100.0, 800.0), "cross_range": 6,
                "cross_timesteps": (100.0, 800.0), "warmup_steps": 1}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["PABConfig", "PABConfig"]:
        every_step = (0.0, 1000.0)  # the first timestep (1000 or 999) aside
        return cls(spatial_range=1), cls(spatial_range=3, spatial_timesteps=every_step, cross_range=3,
                                         cross_timesteps=every_step)

    def key_ignores(self) -> tuple[str, ...]:
        """`cross_timesteps` without cross-attention broadcast."""
        return ("cross_timesteps",) if self.cross_range is None else ()


@dataclass
class PABStats(MethodStats):
    """Steps "full" (no attention broadcast) or "partial"; all transformer calls; attention calls computed and
    broadcast (the current or last generation)."""

    transformer_calls: int = 0
    attentions_computed: int = 0
    attentions_broadcast: int = 0
    broadcast: dict[int, list[str]] = field(default_factory=dict)  # step -> the attention modules broadcast


class PABHandle(DiffusersCacheHandle):
    """`diffusers.hooks.apply_pyramid_attention_broadcast` on the family's attention modules, with a timestep
    callback that reads the scheduler once per generation."""

    def __init__(self, target, config):
        super().__init__(target, config)
        from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

        self.hook_names = (_PYRAMID_ATTENTION_BROADCAST_HOOK,)
        self._timesteps: list[float] | None = None

    def _register_hooks(self) -> None:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        c = self.config
        family = family_for(self.transformer, "PAB", ATTENTION)
        # diffusers matches its identifiers with re.search: anchor each of the family's patterns
        identifiers = tuple(f"^(?:{p})$" for p in family.modules[ATTENTION])
        apply_pyramid_attention_broadcast(self.transformer, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=c.spatial_range, spatial_attention_timestep_skip_range=c.spatial_timesteps,
            cross_attention_block_skip_range=c.cross_range, cross_attention_timestep_skip_range=c.cross_timesteps,
            spatial_attention_block_identifiers=identifiers, cross_attention_block_identifiers=identifiers,
            temporal_attention_block_identifiers=(), current_timestep_callback=self.current_timestep,
        ))
        self._names = {id(m): name for name, m in self.transformer.named_modules()}

    def current_timestep(self) -> float:
        """The timestep of the current step; above every range during the warm-up, so every attention runs."""
        step = len(self._steps)
        if step < self.config.warmup_steps:
            return math.inf
        if self._timesteps is not None and step < len(self._timesteps):
            return self._timesteps[step]
        t = call_timestep(self.transformer, *self._call)  # a bare transformer: the call's own timestep
        return math.inf if t is None else t

    def _before_call(self) -> None:
        if self._starting:
            timesteps = getattr(getattr(self._pipe, "scheduler", None), "timesteps", None)
            self._timesteps = None if timesteps is None or len(timesteps) == 0 else timesteps.tolist()
        self._cached = [(module, hook.state.cache) for module, hook in self._own_state]

    def _after_call(self, context_name: str) -> None:
        if context_name != CONTEXT:
            return
        # a broadcast returns the cached output object itself; a computed attention makes a new one
        broadcast = [self._names[id(module)] for (module, before), (_, hook) in zip(self._cached, self._own_state)
                     if before is not None and hook.state.cache is before]
        self._counts["attentions_broadcast"] += len(broadcast)
        self._counts["attentions_computed"] += len(self._own_state) - len(broadcast)
        if broadcast:
            self._counts["broadcast"][len(self._steps)] = broadcast

    def _fresh_counts(self) -> dict:
        return {"attentions_computed": 0, "attentions_broadcast": 0, "broadcast": {}}

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        if self._counts["attentions_broadcast"] > before["attentions_broadcast"]:
            return StepRecord(step, "partial")
        return StepRecord(step, "full", tokens)

    @property
    def stats(self) -> PABStats:
        """Transformer calls, attention calls computed and broadcast, and which were broadcast at each step."""
        return PABStats(steps=list(self._steps), **self._counts)


PABConfig.handle = PABHandle
