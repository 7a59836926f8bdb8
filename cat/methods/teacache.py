"""TeaCache: Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model",
arXiv 2411.19108 (code: github.com/ali-vilab/TeaCache).

Whole steps are skipped: the block stack is not run and the residual it added at the last computed step (its
output minus its input) is added to its input instead. The indicator is the timestep-modulated input of block 0
(the input after block 0's first norm and its timestep modulation, which the authors compute from the block's own
modules): its relative L1 change from the previous step, mean |m_t - m_{t-1}| / mean |m_{t-1}|, rescaled by a
polynomial fitted offline per model, is accumulated over the steps since the last computed one; a step is
skipped while the sum stays below `threshold`, and computed (the sum reset) when it reaches it. The first
`warmup_steps` steps and (by default) the last step are always computed.

The polynomial maps the modulated input's change to the model output's change between consecutive steps and is
model-specific: `TeaCacheConfig.calibrate` fits it (numpy.polyfit of degree 4 over every step of every calibration
prompt, as the authors describe it, github.com/ali-vilab/TeaCache/issues/2), and `python scripts/calibrate.py
method=teacache model=<name> model.steps=<n>` stores it where conf/method/teacache.yaml reads it, keyed on model,
step count and guidance scale. Implemented as small diffusers `ModelHook`s on the blocks; the shared plumbing
(cache context, generation resets, exact removal) is `cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..engine.diffusers_cache import DiffusersCacheHandle, diffusers_blocks
from ..engine.stats import StepRecord
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_num, register
from .dbcache import block_output, pass_through, relative_l1
from .fbcache import BlockSkipStats, _split

# The authors' FLUX polynomial (`TeaCache4FLUX/teacache_flux.py`, `teacache_forward`), used when `coefficients`
# is None on FLUX; every other model needs its own.
DEFAULT_COEFFICIENTS = {
    "FluxTransformer2DModel": (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01),
}
DEGREE = 4  # of the fitted polynomial, as the authors fit theirs


def _modulate_joint(block, hidden: torch.Tensor, kwargs: dict, meta, args) -> torch.Tensor:
    """SD3 / SD3.5 (`JointTransformerBlock`) and FLUX (`FluxTransformerBlock`): norm1's first output."""
    temb = meta._get_parameter_from_args_kwargs("temb", args, kwargs)
    return block.norm1(hidden, emb=temb)[0]


def _modulate_adaln_single(block, hidden: torch.Tensor, kwargs: dict, meta, args) -> torch.Tensor:
    """PixArt (`BasicTransformerBlock` with AdaLN-single): norm1(x) (1 + scale_msa) + shift_msa."""
    timestep = meta._get_parameter_from_args_kwargs("timestep", args, kwargs)
    table = block.scale_shift_table[None] + timestep.reshape(hidden.shape[0], 6, -1)  # [B, 6, D]
    shift_msa, scale_msa = table.chunk(6, dim=1)[:2]  # [B, 1, D] each
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa  # [B, N, D]


# Block class -> its timestep-modulated input, as the authors' code computes it for that kind of block.
MODULATED_INPUT = {
    "JointTransformerBlock": _modulate_joint,
    "FluxTransformerBlock": _modulate_joint,
    "BasicTransformerBlock": _modulate_adaln_single,
}


@register
@dataclass(frozen=True)
class TeaCacheConfig(MethodConfig):
    """TeaCache. Defaults: the authors' FLUX setting (threshold 0.6, their script's value; 0.25, 0.4, 0.6 and
    0.8 are the settings its README times). `threshold=0` never skips: bit-exact (a polynomial can be negative, so
    the authors' `<` alone would skip at 0).

    Attributes:
        threshold: the accumulated rescaled change below which a step is skipped (`rel_l1_thresh`).
        coefficients: the rescaling polynomial, highest power first (numpy.poly1d's order), calibrated per model
            (`calibrate`, `scripts/calibrate.py`); None: the authors' FLUX polynomial on FLUX, refused elsewhere.
        warmup_steps: leading steps always computed (the authors' 1: `cnt == 0`).
        compute_last_step: the last step is always computed (the authors' `cnt == num_steps - 1`); the step
            count is the pipeline scheduler's (for a bare transformer, `handle.reset(num_steps=T)`).

    The authors' setting per architecture, `TeaCacheConfig.authors(family, num_steps)` (ali-vilab/TeaCache
    @7c10efc; no SD3 and no PixArt code: MMDiT follows TeaCache4FLUX, PixArt their Latte code, the nearest:
    Latte's transformer is PixArt-alpha's block with AdaLN-single, and its modulated input is computed the same
    way). `coefficients` is left out: it is calibrated per model.

    | field | MMDiT: `TeaCache4FLUX/teacache_flux.py` | PixArt: `eval/teacache/experiments/latte.py` |
    |---|---|---|
    | threshold | 0.6 (module level, `rel_l1_thresh`) | 0.1 (`eval_teacache_slow`; `eval_teacache_fast` 0.2) |
    | warmup_steps | 1 (`teacache_forward`: `cnt == 0`) | 1 (`teacache_forward`: the first timestep) |
    | compute_last_step | True (`cnt == num_steps - 1`) | True (the last timestep) |

    The rule is theirs (`teacache_forward` in both files): the modulated input of every step is kept, the
    rescaled change accumulated from the step after a computed one, and the residual of the whole block stack
    (image tokens) reused. Their polynomials are for their models (FLUX `[4.98651651e+02, -2.83781631e+02,
    5.58554382e+01, -3.82021401e+00, 2.64230861e-01]`, Latte `[-2.46434137e+03, 3.08044764e+02, 8.07447667e+01,
    -4.11385132e+00, 1.11001402e-01]`); ours are fitted on ours, over the whole CFG batch as the rule sees it.
    Where ours deviates: the skip decision and the fit see the whole batch (both CFG halves of every prompt),
    as the authors' FLUX code sees its batch; the polynomial is fitted on `scripts/calibrate.py`'s calibration
    prompts (theirs on 70 T2V-CompBench prompts for their video models).
    """

    name: ClassVar[str] = "teacache"
    threshold: float = 0.6
    coefficients: tuple[float, ...] | None = None
    warmup_steps: int = 1
    compute_last_step: bool = True

    def __post_init__(self):
        check(is_num(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0, self, "threshold",
              "a finite number >= 0")
        values = self.coefficients
        if isinstance(values, Sequence) and not isinstance(values, str) and all(is_num(v) for v in values):
            object.__setattr__(self, "coefficients", values := tuple(float(v) for v in values))
        check(values is None or (isinstance(values, tuple) and len(values) >= 1
                                 and all(math.isfinite(v) for v in values)),
              self, "coefficients", "None or a sequence of finite numbers, highest power first (see "
                                    "TeaCacheConfig.calibrate)")
        check_warmup(self)
        check(isinstance(self.compute_last_step, bool), self, "compute_last_step", "True or False")

    def check_steps(self, num_steps: int) -> None:
        check_warmup_steps(self, num_steps)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their FLUX setting on MMDiT, their Latte setting on PixArt (see the class docstring)."""
        threshold = 0.6 if architecture(cls, family, num_steps) == "mmdit" else 0.1
        return {"threshold": threshold, "warmup_steps": 1, "compute_last_step": True}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["TeaCacheConfig", "TeaCacheConfig"]:
        identity = (0.0, 0.0, 0.0, 1.0, 0.0)  # as a calibration would give them: the change itself
        return cls(threshold=0.0, coefficients=identity), cls(threshold=10.0, coefficients=identity)

    def missing_calibration(self, transformer_class: str) -> str | None:
        if self.coefficients is not None or transformer_class in DEFAULT_COEFFICIENTS:
            return None
        return ("needs its rescaling polynomial calibrated for this model, step count and guidance scale (or give "
                "method.config.coefficients=[...], or read another step count's calibration with "
                "method.calibration.steps=<n>)")

    @classmethod
    def calibrate(cls, pipe, prompts: list[str], num_inference_steps: int, **call_kwargs) -> dict:
        """{"coefficients": the polynomial fitted on every step of every prompt, "input_changes" and
        "output_changes": the points it was fitted on} (see `calibrate_teacache`)."""
        inputs, outputs = measure_changes(pipe, prompts, num_inference_steps, **call_kwargs)
        return {"coefficients": fit_coefficients(inputs, outputs), "input_changes": inputs, "output_changes": outputs}

    @classmethod
    def combine_calibrations(cls, measured: list[dict]) -> dict:
        """One polynomial fitted on the points of every calibration (one per prompt), as the authors fit theirs
        on every step of every prompt (a mean of per-prompt fits would weigh the prompts' ranges differently)."""
        inputs = [x for m in measured for x in m["input_changes"]]
        outputs = [y for m in measured for y in m["output_changes"]]
        return {"coefficients": fit_coefficients(inputs, outputs), "points": len(inputs)}


def fit_coefficients(inputs: list[float], outputs: list[float]) -> list[float]:
    """numpy.polyfit of the output changes on the input changes (degree 4, fewer with fewer points)."""
    import numpy as np

    if len(inputs) < 2:
        raise ValueError(f"TeaCache's calibration needs at least 2 measured steps, got {len(inputs)}")
    degree = min(DEGREE, len(inputs) - 1)
    return [float(c) for c in np.polyfit(np.asarray(inputs, dtype=np.float64), np.asarray(outputs, np.float64),
                                         degree)]


@dataclass
class TeaCacheStats(BlockSkipStats):
    """Steps "full" or "skipped" (the whole block stack), the skipped calls, blocks computed and skipped; the
    accumulated rescaled change at each step after the decision (0 after a computed one); when calibrating, the
    modulated input's relative change at every step but the first."""

    accumulated: list[float] = field(default_factory=list)
    input_changes: list[float] = field(default_factory=list)


class _TeaState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0  # calls of this cache context so far (its steps)
        self.previous = None  # the modulated input of the previous step
        self.accumulated = 0.0  # the rescaled change accumulated since the last computed step
        self.stack_input = None  # the block stack's hidden input at the current call
        self.residual = None  # the block stack's residual at the last computed step
        self.skip = False


def _tea_hooks():
    """TeaCache's hooks, built on diffusers' ModelHook and block metadata (imported lazily)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.hooks.hooks import ModelHook
    from diffusers.utils.torch_utils import unwrap_module

    class TeaBlockHook(ModelHook):
        """On every block: the first decides the step; on a skipped step every block passes its inputs through
        and the last adds the cached residual; on a computed step the last records it."""

        _is_stateful = True

        def __init__(self, state_manager, handle: "TeaCacheHandle", first: bool, last: bool):
            super().__init__()
            self.state_manager, self.handle, self.first, self.last = state_manager, handle, first, last

        def initialize_hook(self, module):
            self.meta = TransformerBlockRegistry.get(unwrap_module(module).__class__)
            return module

        def new_forward(self, module, *args, **kwargs):
            state = self.state_manager.get_state()
            counts = self.handle._counts
            if self.first:
                state.stack_input = self.meta._get_parameter_from_args_kwargs(
                    self.meta.hidden_states_argument_name, args, kwargs)
                self._decide(module, args, kwargs, state)
            if state.skip:
                counts["blocks_skipped"] += 1
                if not self.last:
                    return pass_through(self.meta, args, kwargs)
                _, encoder = _split(pass_through(self.meta, args, kwargs), self.meta)
                return block_output(self.meta, state.stack_input + state.residual, encoder)
            output = self.fn_ref.original_forward(*args, **kwargs)
            counts["blocks_computed"] += 1
            if self.last:
                state.residual = _split(output, self.meta)[0] - state.stack_input
            return output

        def _decide(self, module, args, kwargs, state) -> None:
            handle, config = self.handle, self.handle.config
            step, state.calls = state.calls, state.calls + 1
            modulated = self._modulated(module, args, kwargs, state.stack_input)
            last = handle.num_steps is not None and step == handle.num_steps - 1
            forced = (step < config.warmup_steps or state.previous is None or state.residual is None
                      or (config.compute_last_step and last))
            if forced or handle.calibrating:
                change = None if state.previous is None else self._change(modulated, state.previous)
                if handle.calibrating and change is not None:
                    handle._counts["input_changes"].append(change)
                state.skip, state.accumulated = False, 0.0
            else:
                state.accumulated += handle.rescale(self._change(modulated, state.previous))
                state.skip = config.threshold > 0 and state.accumulated < config.threshold
                if not state.skip:
                    state.accumulated = 0.0
            state.previous = modulated
            handle._counts["accumulated"].append(state.accumulated)

        @torch.no_grad()
        def _modulated(self, module, args, kwargs, hidden) -> torch.Tensor:
            return MODULATED_INPUT[type(unwrap_module(module)).__name__](module, hidden, kwargs, self.meta, args)

        @torch.compiler.disable
        def _change(self, modulated, previous) -> float:
            return relative_l1(modulated, previous).item()

        def reset_state(self, module):
            self.state_manager.reset()
            return module

    return TeaBlockHook


class TeaCacheHandle(DiffusersCacheHandle):
    """TeaCache as diffusers hooks on every block (the first decides; see `_tea_hooks`)."""

    hook_names = ("cat_teacache_block_hook",)
    calibrating = False  # set by `measure_changes`: nothing is skipped, the modulated input's changes are recorded

    def _register_hooks(self) -> None:
        from diffusers.hooks._helpers import TransformerBlockRegistry
        from diffusers.hooks.hooks import HookRegistry, StateManager

        blocks = diffusers_blocks(self.transformer)
        if not blocks:
            raise ValueError(f"TeaCacheConfig: {type(self.transformer).__name__} has no transformer blocks")
        first = type(blocks[0][1]).__name__
        if first not in MODULATED_INPUT or getattr(blocks[0][1], "norm_type", "ada_norm_single") != "ada_norm_single":
            raise NotImplementedError(f"TeaCacheConfig: no timestep-modulated input is known for {first} (block 0 of "
                                      f"{type(self.transformer).__name__}); known: {', '.join(sorted(MODULATED_INPUT))}"
                                      f" (BasicTransformerBlock with norm_type='ada_norm_single')")
        for _, block in blocks:
            TransformerBlockRegistry.get(type(block))  # raises for blocks diffusers has no metadata for
        if not self.calibrating:
            self._polynomial = self.config.coefficients or self._default_coefficients()
        hook_cls = _tea_hooks()
        manager = StateManager(_TeaState)
        for i, (_, block) in enumerate(blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                hook_cls(manager, self, i == 0, i == len(blocks) - 1), self.hook_names[0])

    def _default_coefficients(self) -> tuple[float, ...]:
        default = DEFAULT_COEFFICIENTS.get(type(self.transformer).__name__)
        if default is None:
            raise ValueError(
                f"TeaCacheConfig.coefficients=None is invalid for {type(self.transformer).__name__}: the rescaling "
                f"polynomial is model-specific; fit it once with TeaCacheConfig.calibrate(pipe, prompts, "
                f"num_inference_steps) and pass TeaCacheConfig(coefficients=...)."
            )
        return default

    def rescale(self, change: float) -> float:
        """The polynomial at `change` (Horner's rule, highest power first, as numpy.poly1d evaluates it)."""
        out = 0.0
        for c in self._polynomial:
            out = out * change + c
        return out

    @property
    def num_steps(self) -> int | None:
        return self.clock.num_steps(getattr(self._pipe, "scheduler", None))

    def _fresh_counts(self) -> dict:
        counts = {"skipped_calls": [], "blocks_computed": 0, "blocks_skipped": 0, "accumulated": []}
        if self.calibrating:
            counts["input_changes"] = []
        return counts

    def _after_call(self, context_name: str) -> None:
        if self._managers[0].get_state().skip:
            self._counts["skipped_calls"].append(self._counts["transformer_calls"] - 1)

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        skipped = self._counts["blocks_skipped"] > before["blocks_skipped"]
        return StepRecord(step, "skipped", 0) if skipped else StepRecord(step, "full", tokens)

    @property
    def stats(self) -> TeaCacheStats:
        """Transformer calls, the skipped ones, blocks computed and skipped, the accumulated change per step."""
        return TeaCacheStats(steps=list(self._steps), **self._counts)


TeaCacheConfig.handle = TeaCacheHandle


def measure_changes(pipe, prompts, num_inference_steps: int, **call_kwargs) -> tuple[list[float], list[float]]:
    """(input changes, output changes): for every prompt (one full generation each, nothing skipped) and every
    step but the first, the relative L1 change from the previous step of block 0's modulated input and of the
    transformer's output, over the whole batch (both CFG halves), as the rule sees them."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("TeaCache's calibration needs at least one prompt")
    handle = TeaCacheHandle(pipe, TeaCacheConfig())
    handle.calibrating = True
    call_kwargs.setdefault("output_type", "latent")
    inputs, outputs, previous = [], [], []

    def record(module, args, output):
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if previous:
            outputs.append(relative_l1(sample, previous[-1]).item())
        previous[:] = [sample.detach()]

    with handle.install():
        for prompt in prompts:
            previous.clear()
            hook = pipe.transformer.register_forward_hook(record)
            try:
                pipe(prompt, num_inference_steps=num_inference_steps, **call_kwargs)
            finally:
                hook.remove()
            inputs.extend(handle.stats.input_changes)
    if len(inputs) != len(outputs):
        raise RuntimeError(f"TeaCache's calibration measured {len(inputs)} input and {len(outputs)} output changes: "
                           "was the transformer called once per step?")
    return inputs, outputs
