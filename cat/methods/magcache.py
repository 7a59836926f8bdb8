"""MagCache: Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache", arXiv 2506.09045.

Whole steps are skipped (the last residual of the block stack is reused) while the error accumulated from
calibrated residual-magnitude ratios stays below `threshold` (`diffusers.hooks.apply_mag_cache`). The ratios
are model-specific: `MagCacheConfig.calibrate` (or `calibrate_magcache(pipe, prompts, num_inference_steps)`)
measures them, and `python scripts/calibrate.py method=magcache model=<name> model.steps=<n>` stores them
where conf/method/magcache.yaml reads them. The shared plumbing (cache context, generation resets, exact
removal) is `cat/engine/diffusers_cache.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine.diffusers_cache import DiffusersCacheHandle, diffusers_blocks
from ..engine.stats import StepRecord
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register
from .fbcache import BlockSkipStats


def _flux_ratios() -> tuple[float, ...]:
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    return tuple(FLUX_MAG_RATIOS.tolist())


# Transformer classes whose ratios diffusers ships (used when `mag_ratios` is None).
DEFAULT_RATIOS = {"FluxTransformer2DModel": _flux_ratios}


@register
@dataclass(frozen=True)
class MagCacheConfig(MethodConfig):
    """MagCache. Defaults: the authors' FLUX setting E024K5R01 (threshold 0.24, at most 5 consecutive skipped
    steps, first 10% of the steps always computed). `mag_ratios` are model-specific: get them with
    `calibrate_magcache` or `python scripts/calibrate.py method=magcache` (FLUX falls back to diffusers'
    `FLUX_MAG_RATIOS`). `threshold=0` or `max_skip_steps=0`
    never skips: bit-exact.

    Attributes:
        threshold: the accumulated error below which a step is skipped.
        max_skip_steps: at most this many consecutive skipped steps (K).
        retention_ratio: the leading share of the steps always computed: int(retention_ratio * T + 0.5)
            steps, as the authors' code and diffusers count them (0.1: 3 of 28). This is MagCache's
            warm-up, unless `warmup_steps` is set.
        warmup_steps: leading steps always computed; None (default) takes them from `retention_ratio`, an
            integer replaces it (`retention_ratio` is then not read).
        forced_steps: 0-based steps that are always computed, their error accumulators reset as at any
            computed step (the authors' FLUX code never skips the step at index 11 of 28; see `authors`).
        mag_ratios: the magnitude ratios per step, calibrated per model (None: diffusers' for FLUX). A
            generation of another step count than the ratios hold is refused unless `stretch_ratios`.
        stretch_ratios: whether ratios calibrated at another step count may be interpolated to the
            generation's (diffusers' interpolation); off by default, so that a calibration made at 28 steps is
            never used at 6 without being asked for.

    The authors' setting per architecture, `MagCacheConfig.authors(family, num_steps)` (Zehong-Ma/MagCache
    @df81cb1; no SD3 and no PixArt code: MMDiT follows their FLUX code, the nearest MMDiT with one rectified-
    flow transformer call per step; PixArt their Open-Sora v1.2 code, the nearest: STDiT3 is a
    PixArt-alpha-derived cross-attention DiT). `mag_ratios` is left out: it is calibrated per model.

    | field | MMDiT: `MagCache4FLUX/magcache_flux.py` | PixArt: `eval/magcache/experiments/opensora.py` |
    |---|---|---|
    | threshold | 0.24 (`magcache_thresh`, module level) | 0.12 (`eval_ours`, `magcache_thresh`) |
    | max_skip_steps | 5 (`K`) | 3 (`eval_ours`, `K`) |
    | retention_ratio | 0.1: int(0.1 T + 0.5) leading steps (`magcache_forward`) | 0.2 (`eval_ours`: `skip_time = 6 # 30*0.2=6`, their only step count 30; scaled as their FLUX code scales it) |
    | warmup_steps | None (from retention_ratio) | None (from retention_ratio) |
    | forced_steps | the steps s with round(s 27 / (T - 1)) == 11 (`magcache_forward`): 11 at 28 steps, 20 at 50, 8 at 20 | () |

    Where ours still deviates: the skip rule is diffusers' (`hooks/mag_cache.py`, the authors' FLUX rule
    with `abs` and ratio[t]). Their Open-Sora code takes the square root of its ratios, accumulates
    `1 - ratio` without `abs` and reads ratio[t-1] (`magcache_forward`); ours applies the FLUX rule to
    PixArt's calibrated ratios.
    """

    name: ClassVar[str] = "magcache"
    threshold: float = 0.24
    max_skip_steps: int = 5
    retention_ratio: float = 0.1
    mag_ratios: tuple[float, ...] | None = None
    warmup_steps: int | None = None
    forced_steps: tuple[int, ...] = ()
    stretch_ratios: bool = False

    def __post_init__(self):
        check(is_num(self.threshold) and math.isfinite(self.threshold) and self.threshold >= 0, self, "threshold",
              "a finite number >= 0")
        check(is_int(self.max_skip_steps) and self.max_skip_steps >= 0, self, "max_skip_steps", "an integer >= 0")
        check(is_num(self.retention_ratio) and 0 <= self.retention_ratio <= 1, self, "retention_ratio",
              "a number in [0, 1]")
        check_warmup(self, allow_none=True)
        forced = self.forced_steps
        if isinstance(forced, Sequence) and not isinstance(forced, str):
            object.__setattr__(self, "forced_steps", forced := tuple(forced))
        check(isinstance(forced, tuple) and all(is_int(s) and s >= 0 for s in forced), self, "forced_steps",
              "a sequence of step indices >= 0")
        ratios = self.mag_ratios
        if isinstance(ratios, Sequence) and not isinstance(ratios, str) and all(is_num(r) for r in ratios):
            object.__setattr__(self, "mag_ratios", ratios := tuple(float(r) for r in ratios))
        check(ratios is None or (isinstance(ratios, tuple) and len(ratios) >= 2
                                 and all(math.isfinite(r) and r > 0 for r in ratios)),
              self, "mag_ratios", "None or a sequence of at least 2 finite positive numbers (see calibrate_magcache)")
        check(isinstance(self.stretch_ratios, bool), self, "stretch_ratios", "True or False")

    @classmethod
    def examples(cls, num_steps: int) -> tuple["MagCacheConfig", "MagCacheConfig"]:
        ratios = tuple(1.0 - 0.01 * i for i in range(num_steps))  # as a calibration would give them
        return cls(threshold=0.0, mag_ratios=ratios), cls(threshold=1.0, mag_ratios=ratios)

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """Their FLUX setting on MMDiT (with its forced step mapped to `num_steps`), their Open-Sora setting on
        PixArt (see the class docstring)."""
        if architecture(cls, family, num_steps) == "mmdit":
            # their test, `np.round(cnt * ((28 - 1) / (num_steps - 1))) != 11`, rounds half to even as round does
            forced = () if num_steps < 2 else tuple(
                s for s in range(num_steps) if round(s * ((28 - 1) / (num_steps - 1))) == 11)
            return {"threshold": 0.24, "max_skip_steps": 5, "retention_ratio": 0.1, "warmup_steps": None,
                    "forced_steps": forced}
        return {"threshold": 0.12, "max_skip_steps": 3, "retention_ratio": 0.2, "warmup_steps": None,
                "forced_steps": ()}

    def missing_calibration(self, transformer_class: str) -> str | None:
        if self.mag_ratios is not None or transformer_class in DEFAULT_RATIOS:
            return None
        return ("needs magnitude ratios calibrated for this model at this step count (or give "
                "method.config.mag_ratios=[...])")

    @classmethod
    def calibrate(cls, pipe, prompts: list[str], num_inference_steps: int, **call_kwargs) -> dict:
        """{"mag_ratios": ...} from diffusers' calibration mode (see `calibrate_magcache`)."""
        return {"mag_ratios": calibrate_magcache(pipe, prompts, num_inference_steps, **call_kwargs)}

    def key_ignores(self) -> tuple[str, ...]:
        """`retention_ratio` when `warmup_steps` replaces it."""
        return () if self.warmup_steps is None else ("retention_ratio",)

    def retained_steps(self, num_steps: int) -> int:
        """The leading steps always computed at `num_steps` steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.retention_ratio * num_steps + 0.5)

    def check_steps(self, num_steps: int) -> None:
        if self.mag_ratios is not None:
            check_ratio_count(self, len(self.mag_ratios), num_steps)
        if self.warmup_steps is not None:
            check_warmup_steps(self, num_steps)
            return
        check(int(self.retention_ratio * num_steps + 0.5) < num_steps, self, "retention_ratio",
              f"small enough to leave some of the {num_steps} steps skippable, or MagCache changes nothing")


def check_ratio_count(config: MagCacheConfig, count: int, num_steps: int) -> None:
    """Refuses ratios of another step count than the generation's unless `stretch_ratios` asks to interpolate."""
    if count != num_steps and not config.stretch_ratios:
        raise ValueError(f"MagCacheConfig.mag_ratios holds {count} ratios (a calibration at {count} steps) and this "
                         f"schedule has {num_steps} steps: calibrate at {num_steps} steps, or set "
                         f"MagCacheConfig.stretch_ratios=True to interpolate the ratios to {num_steps} steps.")


@dataclass
class MagCacheStats(BlockSkipStats):
    """Steps "full" or "skipped" (the whole block stack skipped), the skipped calls, blocks computed and skipped;
    when calibrating, the magnitude ratios recorded so far."""

    mag_ratios: list[float] = field(default_factory=list)


class MagCacheHandle(DiffusersCacheHandle):
    """`diffusers.hooks.apply_mag_cache`, re-configured at every generation for its actual number of steps
    (the pipeline scheduler's; for a bare transformer, `len(mag_ratios)`)."""

    calibrating = False  # set by calibrate_magcache: nothing is skipped, the magnitude ratios are recorded

    def __init__(self, target, config):
        super().__init__(target, config)
        from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

        self.hook_names = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)
        self._configs: dict[Any, Any] = {}  # step count (or ("forced", id)) -> diffusers config

    def _register_hooks(self) -> None:
        from diffusers.hooks import apply_mag_cache

        self._num_blocks = len(diffusers_blocks(self.transformer))
        if self._num_blocks == 0:
            raise ValueError(f"MagCacheConfig: {type(self.transformer).__name__} has no transformer blocks")
        if self.calibrating:
            from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig

            # More steps than any run: diffusers' end-of-run reset (and print) never fires; we reset per generation.
            self._ratios = None
            config = DiffusersMagCacheConfig(calibrate=True, num_inference_steps=2**31)
        else:
            self._ratios = self.config.mag_ratios or self._default_ratios()
            config = self._diffusers_config(len(self._ratios))
        self._config_now = config  # the generation's diffusers config (the leader hook's, but at a forced step)
        apply_mag_cache(self.transformer, config)  # also adds an empty root registry, which `_unhook` drops again

    def _default_ratios(self) -> tuple[float, ...]:
        default = DEFAULT_RATIOS.get(type(self.transformer).__name__)
        if default is None:
            raise ValueError(
                f"MagCacheConfig.mag_ratios=None is invalid for {type(self.transformer).__name__}: the magnitude ratios "
                f"are model-specific; compute them once with "
                f"cat.calibrate_magcache(pipe, prompts, num_inference_steps) and pass MagCacheConfig(mag_ratios=...)."
            )
        return default()

    def _diffusers_config(self, num_steps: int):
        if num_steps not in self._configs:
            from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig

            c = self.config
            never = c.threshold == 0  # diffusers skips while error <= threshold: exact ratios of 1.0 would skip at 0
            # diffusers computes int(retention_ratio * T + 0.5) leading steps; W / T gives exactly W of them
            retention = c.retention_ratio if c.warmup_steps is None else c.warmup_steps / num_steps
            self._configs[num_steps] = DiffusersMagCacheConfig(
                threshold=-1.0 if never else c.threshold, max_skip_steps=c.max_skip_steps,
                retention_ratio=retention, num_inference_steps=num_steps, mag_ratios=list(self._ratios),
            )
        return self._configs[num_steps]

    def _forced_config(self, config):
        """`config` with a threshold no error meets: the step computes and resets the accumulators."""
        key = ("forced", id(config))
        if key not in self._configs:
            from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig

            self._configs[key] = DiffusersMagCacheConfig(
                threshold=-1.0, max_skip_steps=config.max_skip_steps, retention_ratio=config.retention_ratio,
                num_inference_steps=config.num_inference_steps, mag_ratios=config.mag_ratios,
            )
        return self._configs[key]

    def _fresh_counts(self) -> dict:
        counts = {"skipped_calls": [], "blocks_computed": 0, "blocks_skipped": 0}
        if self.calibrating:
            counts["mag_ratios"] = []
        return counts

    def _before_call(self) -> None:
        if self._starting and not self.calibrating and self._pipe is not None:
            timesteps = getattr(getattr(self._pipe, "scheduler", None), "timesteps", None)
            if timesteps is not None and len(timesteps) > 0:
                if self.config.mag_ratios is None:  # diffusers' ratios: the config cannot see their count
                    check_ratio_count(self.config, len(self._ratios), len(timesteps))
                config = self._config_now = self._diffusers_config(len(timesteps))
                for _, hook in self._hooks:
                    hook.config = config
        if self.config.forced_steps and not self.calibrating:
            # the leader hook decides the step: at a forced step it sees a threshold no error meets
            from diffusers.hooks.mag_cache import MagCacheHeadHook

            config = self._config_now
            step = self._managers[0].get_state().step_index
            for _, hook in self._hooks:
                if isinstance(hook, MagCacheHeadHook):
                    hook.config = self._forced_config(config) if step in self.config.forced_steps else config

    def _after_call(self, context_name: str) -> None:
        state = self._managers[0].get_state()
        if state.should_compute:
            self._counts["blocks_computed"] += self._num_blocks
        else:
            self._counts["blocks_skipped"] += self._num_blocks
            self._counts["skipped_calls"].append(self._counts["transformer_calls"] - 1)
        if self.calibrating and context_name == "cond":
            self._counts["mag_ratios"] = list(state.calibration_ratios)

    def _step_record(self, step: int, before: dict, tokens: int | None) -> StepRecord:
        skipped = self._counts["blocks_skipped"] > before["blocks_skipped"]
        return StepRecord(step, "skipped", 0) if skipped else StepRecord(step, "full", tokens)

    @property
    def stats(self) -> "MagCacheStats":
        """Transformer calls, the skipped ones, blocks computed and skipped; `mag_ratios` when calibrating."""
        return MagCacheStats(steps=list(self._steps), **self._counts)


MagCacheConfig.handle = MagCacheHandle


def calibrate_magcache(pipe, prompts, num_inference_steps: int, **call_kwargs) -> list[float]:
    """MagCache's magnitude ratios for `pipe` at `num_inference_steps`, from diffusers' calibration mode.

    Runs one full generation per prompt (nothing skipped) and returns, per step, the mean over prompts of
    mean-over-tokens ||residual_t|| / ||residual_{t-1}|| of the whole block stack (1.0 at step 0). Pass the result
    as `MagCacheConfig(mag_ratios=...)`; at another step count, with `stretch_ratios=True` (interpolated).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("calibrate_magcache needs at least one prompt")
    handle = MagCacheHandle(pipe, MagCacheConfig())
    handle.calibrating = True
    call_kwargs.setdefault("output_type", "latent")
    runs = []
    with handle.install():
        for prompt in prompts:
            pipe(prompt, num_inference_steps=num_inference_steps, **call_kwargs)
            ratios = handle.stats.mag_ratios
            if not ratios:
                raise RuntimeError("calibrate_magcache recorded no ratios: was the transformer called?")
            runs.append(ratios)
    return [sum(r[i] for r in runs) / len(runs) for i in range(min(map(len, runs)))]
