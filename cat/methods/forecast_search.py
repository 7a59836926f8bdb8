"""A budgeted forecasting cache: a schedule of full, forecast and corrected steps searched offline under an
executed-MACs budget, with a cluster correction of the forecast on the corrected steps. This project's design
(issue 37), assembled from what the field shows:

  * Forecast, don't copy. On a skipped step no cached module runs: each module's output is forecast from its
    last full computations (TaylorSeer's finite differences in the Taylor basis, or HiCache's scaled Hermite
    basis; `cat.core.forecast`), as TaylorSeer (Shenyi-Z/TaylorSeer), HiCache (yiming-l21/CFGCache @bf339cb,
    `taylor_utils/__init__.py` `_hicache_prediction_formula`) and ClusCa (Shenyi-Z/Cache4Diffusion @91a1949)
    do. The modules are the family's `STEP_CACHED` ones (SD3: attn, attn2, ff, ff_context; PixArt: attn1,
    attn2, ff).
  * Search the schedule, don't fix it. Each step takes one action fixed before generation: "F" full, "f"
    forecast, "c" corrected. The schedule is the least-error path of a DAG of segments (a full step followed
    by skipped steps of one kind) under a budget on executed MACs: LeMiCa's formulation (Gao et al., NeurIPS
    2025, arXiv 2511.00090; scruffynerf/LeMiCa @656fb4f `LeMiCa4FLUX/inference_flux1.py` `main` stores one
    list of full steps per budget) with this project's edge weights and budget (`cat.core.schedule`). BudCache
    (Westlake-AGI-Lab/BudCache @49c5e86, `scripts/stage1_search_flux.py` `main`) also searches offline under a
    fixed budget, by annealing over whole-trajectory errors; here the segments' errors are measured once and
    the search is exact over them.
  * Spend token compute as a correction. A corrected step also runs each image MLP (`ff`) exactly on K image
    tokens (fixed K: fixed shapes) and corrects the forecast with them (`cat.core.propagation.correct`):
    `correction="cluster"` takes one token per k-means cluster of the last full step's output (the member
    nearest its centroid; ClusCa computes one token per cluster) and adds `gamma` times each representative's
    forecast error to its cluster; `correction="topk"` takes K tokens by CAT's own rule (relative noise
    between the last two full steps' outputs, cluster saliency and staleness, `cat.core.select_pruned` at
    CAT's defaults) and replaces their rows only, with no propagation.

How the schedule is found (`ForecastSearchConfig.calibrate`, run by `scripts/calibrate.py`): on calibration
prompts, the full model's trajectory is recorded (every transformer input and every cached module's output
at every step). Then every segment "full step i, then L skipped steps of kind k" (L = 1 .. `max_skip`) is run
with teacher forcing: each transformer call gets the full model's input of its step, full steps replay the
recorded module outputs (no block runs), skipped steps forecast (and correct) as at inference, with the
previous full step L + 1 steps earlier (regular spacing: one pass per gap and offset computes every such
segment at once). A segment's weight is the squared norm of what it adds to the latent's deviation from the
full model's trajectory, over the final latent's squared norm, averaged over the prompts. The MACs of each
action are counted by FlopCounterMode on a meta copy of the transformer at the calibration's shapes. The
search (`cat.core.schedule.search_schedule`) then runs on these numbers for any budget, warm-up and longest
run of skipped steps: it is exact for the additive model (segments add their squared deviations), not for
the real trajectory, whose errors compound.

Defaults: HiCache's forecast (Hermite basis, order 2, scale 0.5: yiming-l21/CFGCache @bf339cb,
`RUN/multi_gpu_launcher.sh`), no correction. On the embedded default model (assets/forecast_search/
tiny_sd3_shapes-28.json, 8 calibration prompts) a corrected segment measured 1.1x to 31x the forecast-only
segment's error with cluster propagation, 0.7x to 2.3x with CAT's tokens: the tokens recomputed on a skipped
step see inputs built from forecasts, so their "exact" outputs are not the full model's. The search takes no
cluster-corrected step there, and a few CAT-token steps at budgets 0.4 to 0.7 (3% lower predicted cost at
0.5); the correction stays an option the search takes where it measures lower.

Fewer solver steps (`forecast_steps`, K): the sampler runs only the full steps the budget allows, B of the
reference's R, plus K forecast steps: M = B + K steps instead of R (the pipeline call's `num_inference_steps`,
set by `handle.call_overrides(reference_steps=R)`, as the `steps` method sets it), and the schedule (searched
or evenly spaced) places the B full steps among the M within the same executed-MACs budget against the
reference. On a multistep solver (the PixArt model's DPM-Solver++) fewer steps beat every cache at 50-60% fewer
MACs, and a forecast step or two among them beat fewer steps alone (docs/results.md); where the budget leaves
room for every step but K, the reference's steps are run as without it. The search reads the calibration's
segment costs resampled to M steps (an approximation: they were measured at R).

Ablation settings: `schedule="interval"` (no search: full steps evenly spaced after the warm-up, as many as
the budget allows) with `correction="none"` is forecast only; `schedule="searched"` adds the search;
`correction="cluster"` the token correction; `correction="topk"` CAT's tokens without propagation.

Fixed shapes: the forecast weights, the factor refresh's 1/d and the orders set are tensors copied per step
from a table made at the first step (device to device), the corrected tokens' index has K columns and lives
in a buffer updated in place, the factors are allocated at a generation's first full step and updated in
place, so no forecast or corrected step reads the device and one compiled graph per kind of step serves
every block of one structure. The cached modules are wrapped (`ForecastModule`, a module rather than a
diffusers hook, whose per-module forward objects torch.compile would guard one by one). Clustering and
selection scores are made at full steps, by a fixed number of Lloyd steps (`KMEANS_ITERS`, warm-started),
so every full step costs the same MACs and reads nothing back either. FLUX is refused (no `STEP_CACHED`
modules in its family mapping).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import core
from ..core.forecast import BASES, refresh_factors_, weigh_by, weights
from ..core.propagation import correct, distinct_centroids, lloyd_l1, nearest_members, rows
from ..core.schedule import (CORRECTED, FORECAST, FULL, check_actions, even_within, regular_schedule,
                             resample_costs, schedule_macs, search_schedule, segments)
from ..engine.forecast_cache import ForecastStats
from ..engine.handle import MethodHandle
from ..engine.patching import attach_hook, set_instance_attr, swap_in
from ..engine.module_cache import StepHook, StepState
from ..engine.stats import StepRecord, tensor_bytes
from ..families import STEP_CACHED, family_for
from ..families.base import check_no_chunking, hidden_states_of
from .base import MethodConfig, architecture, check, check_warmup, check_warmup_steps, is_int, is_num, register
from .cat import CATConfig, noise_channels

HOOK_NAME = "forecast_search"
SCHEDULES = ("searched", "interval")
CORRECTIONS = ("none", "cluster", "topk")
SEARCHED_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)  # the budgets whose schedules a calibration file lists
# what the segment costs depend on: a calibration holds for these fields only
CALIBRATED_FIELDS = ("num_corrected", "gamma", "max_order", "basis", "scale")
PHASES = {FULL: "full", FORECAST: "forecast", CORRECTED: "corrected"}
KMEANS_ITERS = 4  # Lloyd steps per full step, from the previous full step's centroids
CALIBRATION_BATCH = 4  # prompts per pipeline call while calibrating


@register
@dataclass(frozen=True)
class ForecastSearchConfig(MethodConfig):
    """The budgeted forecasting cache (see the module docstring). `budget=0` computes every step: bit-exact.

    No authors: the defaults are this project's (`authors` returns them). The schedule at a budget comes from
    a calibration (`calibration`, measured by `python scripts/calibrate.py method=forecast_search
    model=<name>`, which also lists the searched schedules at `SEARCHED_BUDGETS`); `actions` gives a schedule
    by hand instead.

    Attributes:
        budget: the executed-MACs reduction the schedule must reach at least (0: every step full; the compute
            knob). MACs per action are the calibration's counts; without a calibration (only `interval`), image
            tokens recomputed (full: all, corrected: K, forecast: none).
        schedule: "searched" (the least-error schedule within the budget, from the calibration's segment costs)
            or "interval" (no search: full steps evenly spaced after the warm-up, as many as the budget allows).
        correction: what the skipped steps may do besides forecasting: "none" (forecast only), "cluster"
            (corrected steps: one token per cluster, its forecast error propagated to the cluster) or "topk"
            (corrected steps: K tokens by CAT's noise ranking with staleness, their rows only). A searched
            schedule mixes forecast and corrected segments; an interval one corrects every skipped step.
        num_corrected: K, the image tokens each image MLP computes on a corrected step (and the k-means
            clusters of the last full step's output).
        gamma: the weight of a representative's forecast error added to its cluster ("cluster" only).
        max_order: the highest finite-difference order of the forecast (0: reuse the last full output).
        basis: "taylor" (TaylorSeer) or "hermite" (HiCache, with `scale`).
        scale: s, the Hermite scale.
        max_skip: the most steps in a row the search may skip (and the calibration measures). A budget no
            schedule meets with the warm-up and max_skip gives the searched schedule with as few full steps as
            they allow (the tightest budget it meets), whose reduction falls short of the one asked.
        warmup_steps: leading full steps.
        forecast_steps: None (the sampler runs the reference's steps) or K >= 1: it runs the full steps the
            budget allows plus K forecast steps, fewer than the reference's (see the module docstring). The call
            must take them: `pipe(prompt, **handle.call_overrides(reference_steps=R))` (a call that runs another
            count raises at its first step). Not with `actions`.
        actions: a schedule given by hand, one of F, f, c per step (overrides `budget` and `schedule`).
        calibration: the search's measurements for one model, step count and guidance scale (a dict or its
            JSON): segment costs per kind, MACs per action, the settings they were measured with.
        guidance_scale: the run's CFG scale (conf files pass the model's), checked against the calibration's.
        reuse_calibration: use a calibration made at another guidance scale or step count (costs resampled to
            the step count: an approximation) instead of refusing it.
    """

    name: ClassVar[str] = "forecast_search"
    calibrates_with_settings: ClassVar[bool] = True  # the segment costs hold for the settings measured with
    calibration_selects: ClassVar[bool] = True  # the search fits the prompts it was measured on (docs/results.md)
    budget: float = 0.5
    schedule: str = "searched"
    correction: str = "none"
    num_corrected: int = 16
    gamma: float = 1.0
    max_order: int = 2
    basis: str = "hermite"
    scale: float = 0.5
    max_skip: int = 6
    warmup_steps: int = 1
    forecast_steps: int | None = None
    actions: str | None = None
    calibration: str | None = dataclasses.field(default=None, repr=False)  # a long record: left out of the repr
    guidance_scale: float | None = None
    reuse_calibration: bool = False

    def __post_init__(self) -> None:
        check(is_num(self.budget) and 0.0 <= self.budget < 1.0, self, "budget", "a number in [0, 1)")
        check(self.schedule in SCHEDULES, self, "schedule", f"one of {', '.join(SCHEDULES)}")
        check(self.correction in CORRECTIONS, self, "correction", f"one of {', '.join(CORRECTIONS)}")
        check(is_int(self.num_corrected) and self.num_corrected >= 1, self, "num_corrected", "an integer >= 1")
        check(is_num(self.gamma) and 0.0 <= self.gamma <= 1.0, self, "gamma", "a number in [0, 1]")
        check(is_int(self.max_order) and 0 <= self.max_order <= 4, self, "max_order", "an integer in [0, 4]")
        check(self.basis in BASES, self, "basis", f"one of {', '.join(BASES)}")
        check(is_num(self.scale) and math.isfinite(self.scale) and self.scale > 0, self, "scale", "a finite number > 0")
        check(is_int(self.max_skip) and self.max_skip >= 1, self, "max_skip", "an integer >= 1")
        check_warmup(self)
        check(self.forecast_steps is None or (is_int(self.forecast_steps) and self.forecast_steps >= 1), self,
              "forecast_steps", "None or an integer >= 1")
        check(self.forecast_steps is None or self.actions is None, self, "forecast_steps",
              "None when actions are given (a schedule by hand has its own step count)")
        if self.actions is not None:
            try:
                check_actions(self.actions)
            except ValueError as err:
                check(False, self, "actions", f"None or a string of F, f, c starting with F ({err})")
            check(set(self.actions[:self.warmup_steps]) == {FULL}, self, "actions",
                  f"full (F) at the {self.warmup_steps} warm-up steps")
            check(self.correction != "none" or CORRECTED not in self.actions, self, "actions",
                  "free of corrected steps (c) when correction='none'")
        check(self.guidance_scale is None or is_num(self.guidance_scale), self, "guidance_scale", "None or a number")
        check(isinstance(self.reuse_calibration, bool), self, "reuse_calibration", "a bool")
        if self.calibration is not None and not isinstance(self.calibration, str):
            object.__setattr__(self, "calibration", json.dumps(_plain(self.calibration), sort_keys=True))
        if self.calibration is not None:
            data = _parse(self.calibration)
            if not (isinstance(data, dict) and {"num_steps", "guidance_scale", "settings", "macs", "costs"} <= set(data)):
                # said without the value: a calibration is a long record
                raise ValueError(f"{type(self).__name__}.calibration is invalid: calibration must be None or what "
                                 "ForecastSearchConfig.calibrate measures (its 'search' field).")

    @property
    def reads_calibration(self) -> bool:
        return self.calibration is not None and self.actions is None and self.budget > 0

    def calibration_mismatch(self) -> str | None:
        """How the calibration does not hold for these settings or this guidance scale (None: it holds)."""
        data = _parse(self.calibration)
        ignored = set(self.key_ignores())  # fields this setting never reads
        differ = [f"{f}={getattr(self, f)!r} (measured with {data['settings'].get(f)!r})" for f in CALIBRATED_FIELDS
                  if f not in ignored and _differs(getattr(self, f), data["settings"].get(f))]
        if self.schedule == "searched" and self.max_skip > data["settings"]["max_skip"]:
            differ.append(f"max_skip={self.max_skip} (measured up to {data['settings']['max_skip']})")
        if differ:
            return (f"has a calibration measured with other settings: {', '.join(differ)}; calibrate these settings "
                    "(method.config.<field>=... on the calibration command) or give actions")
        measured = data["guidance_scale"]
        if (self.guidance_scale is not None and measured is not None and not self.reuse_calibration
                and _differs(self.guidance_scale, measured)):
            return (f"has a calibration measured at guidance_scale={measured}, and the run uses {self.guidance_scale}: "
                    "calibrate at this guidance scale, or set reuse_calibration=true")
        return None

    def check_steps(self, num_steps: int) -> None:
        """`num_steps`: the reference's step count (or, with `forecast_steps`, the fewer steps a call runs)."""
        check_warmup_steps(self, num_steps)
        if self.actions is not None:
            check(len(self.actions) == num_steps, self, "actions", f"one action per step ({num_steps})")
        if self.forecast_steps is None:  # with it, num_steps is the call's fewer steps: checked against the reference
            self.check_calibration_steps(num_steps)

    def check_calibration_steps(self, num_steps: int) -> None:
        """`num_steps`: the reference's step count."""
        if self.reads_calibration and not self.reuse_calibration:
            measured = _parse(self.calibration)["num_steps"]
            if measured != num_steps:
                raise ValueError(f"{type(self).__name__}.calibration was measured at {measured} steps, this run has "
                                 f"{num_steps}: calibrate at {num_steps} steps, or set reuse_calibration=True.")

    def check_tokens(self, num_tokens: int) -> None:
        if self.correction != "none":
            check(self.num_corrected < num_tokens, self, "num_corrected",
                  f"smaller than the number of image tokens ({num_tokens})")

    def call_overrides(self, reference_steps: int | None = None) -> dict:
        """With `forecast_steps`: the sampler's fewer steps for a reference of `reference_steps` (required)."""
        if self.forecast_steps is None:
            return {}
        if reference_steps is None:
            raise ValueError(f"{type(self).__name__}(forecast_steps={self.forecast_steps}) runs fewer steps than the "
                             "reference, computed from the reference's step count: call the pipeline with "
                             "**handle.call_overrides(reference_steps=<the full model's steps>)")
        if self.schedule == "searched":
            self.check_calibration_steps(reference_steps)
        return {"num_inference_steps": self.solver_steps(reference_steps)}

    def missing_calibration(self, transformer_class: str) -> str | None:
        if self.schedule == "searched" and self.actions is None and self.budget > 0 and self.calibration is None:
            return ("needs its segment costs measured on this model at this step count and guidance scale (or give "
                    "method.config.actions=...)")
        return self.calibration_mismatch() if self.reads_calibration else None

    @classmethod
    def calibrate(cls, pipe, prompts: list[str], num_inference_steps: int, config: "ForecastSearchConfig | None" = None,
                  generator=None, **call_kwargs) -> dict:
        """The search's measurements on `pipe` for `prompts` ({"search": ...}: segment costs of every kind,
        MACs per action, the settings they hold for; `config` gives the forecast and correction settings, by
        default this class's). `generator`: one, or one per prompt. `combine_calibrations` merges several and
        lists the searched schedules."""
        config = cls() if config is None else config
        if isinstance(prompts, str):
            prompts = [prompts]
        generators = generator if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
        return {"search": measure(pipe, prompts, generators, num_inference_steps, config, call_kwargs)}

    @classmethod
    def combine_calibrations(cls, measured: list[dict]) -> dict:
        """One calibration from several `calibrate` results (scripts/calibrate.py measures one per prompt): the
        segment costs averaged over every prompt, and the searched schedule of every kind at each of
        `SEARCHED_BUDGETS` (at the measured warm-up and max_skip) with its predicted cost:
        {"search": ..., "schedules": ..., "predicted_cost": ...}."""
        searches = [m["search"] for m in measured]
        first = searches[0]
        for other in searches[1:]:
            for key in ("num_steps", "guidance_scale", "settings", "macs"):
                if other[key] != first[key]:
                    raise ValueError(f"{cls.__name__}.combine_calibrations: the calibrations differ in {key} "
                                     f"({first[key]!r} and {other[key]!r}); combine those of one model and setting")
        prompts = sum(s["prompts"] for s in searches)
        costs = {kind: [[None if cost is None else sum(s["prompts"] * s["costs"][kind][i][j] for s in searches) / prompts
                         for j, cost in enumerate(row)] for i, row in enumerate(table)]
                 for kind, table in first["costs"].items()}
        search = {**first, "prompts": prompts, "costs": costs}
        settings = search["settings"]
        found = cls(calibration=json.dumps(search, sort_keys=True), guidance_scale=search["guidance_scale"],
                    warmup_steps=settings["warmup_steps"], max_skip=settings["max_skip"],
                    **{f: settings[f] for f in CALIBRATED_FIELDS})
        schedules, predicted = {}, {}
        for kind in CORRECTIONS:
            for budget in SEARCHED_BUDGETS:
                setting = dataclasses.replace(found, budget=budget, correction=kind)
                actions, cost = setting.searched(search["num_steps"])
                schedules.setdefault(kind, {})[str(budget)] = actions
                predicted.setdefault(kind, {})[str(budget)] = cost
        return {"search": search, "schedules": schedules, "predicted_cost": predicted}

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """No authors: this project's defaults (the schedule, correction and forecast fields)."""
        architecture(cls, family, num_steps)
        return {"schedule": "searched", "correction": "none", "num_corrected": 16, "gamma": 1.0, "max_order": 2,
                "basis": "hermite", "scale": 0.5, "max_skip": 6, "warmup_steps": 1}

    @classmethod
    def examples(cls, num_steps: int) -> tuple["ForecastSearchConfig", "ForecastSearchConfig"]:
        """Every step full; a fixed interval at half the image tokens with corrected steps (no calibration)."""
        return cls(budget=0.0), cls(schedule="interval", correction="cluster", num_corrected=4)

    def key_ignores(self) -> tuple[str, ...]:
        ignored = set()
        if self.actions is not None or self.budget == 0:
            ignored |= {"schedule", "max_skip", "calibration", "guidance_scale", "reuse_calibration"}
            if self.actions is not None:
                ignored.add("budget")
            if self.budget == 0 and self.actions is None:
                ignored |= set(CALIBRATED_FIELDS) | {"correction", "max_order"}
        if self.schedule == "interval":
            ignored.add("max_skip")
        if self.correction == "none":
            ignored |= {"num_corrected", "gamma"}
        elif self.correction == "topk":
            ignored.add("gamma")
        if self.basis == "taylor" or self.max_order == 0:
            ignored.add("scale")
        if self.max_order == 0:
            ignored.add("basis")
        if self.calibration is None:
            ignored.add("reuse_calibration")
        return tuple(sorted(ignored))

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int]:
        """All image tokens on full steps, K on corrected steps, none on forecast steps (one entry per step the
        sampler runs: fewer than `num_steps` with `forecast_steps`)."""
        tokens = {FULL: num_tokens, FORECAST: 0, CORRECTED: self.num_corrected}
        return [tokens[a] for a in self.plan(num_steps, num_tokens)]

    # the schedule

    def macs(self, num_tokens: int | None = None) -> dict[str, float]:
        """MACs of each action and of a step of the model without the method ("model"): the calibration's
        counts, else image tokens recomputed."""
        if self.calibration is not None:
            counted = _parse(self.calibration)["macs"]
            return {**counted[self.correction], "model": counted["model"]}
        if num_tokens is None:
            raise ValueError(f"{type(self).__name__}: the MACs per action need a calibration or the image token count")
        return {FULL: num_tokens, FORECAST: 0, CORRECTED: self.num_corrected, "model": num_tokens}

    def plan(self, num_steps: int, num_tokens: int | None = None) -> str:
        """The schedule of a generation whose reference runs `num_steps` steps: one of F, f, c per step the
        sampler runs (`solver_steps(num_steps)` of them)."""
        if self.actions is not None:
            check_actions(self.actions, num_steps)
            return self.actions
        if self.budget == 0:
            return FULL * num_steps
        if self.schedule == "searched":
            return self.searched(num_steps)[0]
        if self.reads_calibration and (mismatch := self.calibration_mismatch()):
            raise ValueError(f"{type(self).__name__} {mismatch}")
        macs = self.macs(num_tokens)
        steps = self.solver_steps(num_steps)
        kind = FORECAST if self.correction == "none" else CORRECTED
        return even_within(steps, min(self.warmup_steps, steps), kind, macs,
                           (1 - self.budget) * num_steps * macs["model"])

    def solver_steps(self, num_steps: int) -> int:
        """The steps the sampler runs for a reference of `num_steps` (the schedule spends at most (1 - budget)
        of the reference's executed MACs over them): the reference's, or with `forecast_steps` K the full steps B
        that fit beside K forecast steps, plus K, where that is fewer."""
        if self.forecast_steps is None or self.budget == 0:
            return num_steps
        macs = self.macs(1)  # ratios only: without a calibration, token counts, whose ratios hold at any count
        k = self.forecast_steps
        cap = (1 - self.budget) * num_steps * macs["model"]
        full = max(math.floor((cap - k * macs[FORECAST]) / macs[FULL] + 1e-9), min(self.warmup_steps, num_steps))
        return min(num_steps, full + k)

    def searched(self, num_steps: int) -> tuple[str, float]:
        """The searched schedule for a reference of `num_steps` steps and its predicted cost (segment costs
        summed)."""
        missing = self.missing_calibration("")
        if missing:
            raise ValueError(f"{type(self).__name__}(schedule='searched') {missing}: run `python scripts/calibrate.py "
                             "method=forecast_search model=<name>` or ForecastSearchConfig.calibrate(pipe, prompts, "
                             "num_inference_steps)")
        self.check_steps(num_steps)
        self.check_calibration_steps(num_steps)
        cap = (1 - self.budget) * num_steps * self.macs()["model"]
        return _search(self.calibration, self.correction, float(cap), self.warmup_steps, self.max_skip,
                       self.solver_steps(num_steps))

    def reduction(self, num_steps: int, num_tokens: int | None = None, actions: str | None = None) -> float:
        """The executed-MACs reduction of the schedule (`actions`, when already planned) against the model at
        `num_steps` (the reference's count) by the MACs per action it was searched with."""
        macs = self.macs(num_tokens)
        actions = self.plan(num_steps, num_tokens) if actions is None else actions
        return 1.0 - schedule_macs(actions, macs) / (num_steps * macs["model"])

    def forecast_weights(self, x: int) -> list[float]:
        """The factors' weights x steps after the last full step."""
        return weights(x, self.max_order, self.basis, self.scale)


def _warn_if_short(config: ForecastSearchConfig, num_steps: int, num_tokens: int | None, actions: str) -> None:
    """Says so when the schedule saves less than the budget asks (a warm-up, or with `max_skip` a longest run of
    skipped steps, that leaves no schedule within it): its images are those of a smaller budget."""
    reached = config.reduction(num_steps, num_tokens, actions)  # the schedule just planned, not planned again
    if reached < config.budget - 1e-9:
        limits = f"warmup_steps={config.warmup_steps}" + (
            f" and max_skip={config.max_skip}" if config.schedule == "searched" else "")
        warnings.warn(f"{type(config).__name__}(budget={config.budget}) is not met with {limits} at {num_steps} steps: "
                      f"its schedule {actions} saves {reached:.1%} of the executed MACs (by the MACs per action it was "
                      "planned with), the most they allow; lower the budget or the warm-up"
                      + (", or raise max_skip" if config.schedule == "searched" else ""), stacklevel=2)


def _plain(value):
    """A config value (OmegaConf containers included) as plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


@functools.lru_cache(maxsize=16)
def _parse(calibration: str) -> dict:
    return json.loads(calibration)


def _differs(a, b) -> bool:
    if is_num(a) and is_num(b):
        return abs(float(a) - float(b)) > 1e-9
    return a != b


@functools.lru_cache(maxsize=512)
def _search(calibration: str, correction: str, cap: float, warmup: int, max_skip: int,
            num_steps: int) -> tuple[str, float]:
    data = _parse(calibration)
    costs = {FORECAST: resample_costs(data["costs"]["none"], num_steps)}
    if correction != "none":
        costs[CORRECTED] = resample_costs(data["costs"][correction], num_steps)
    macs = data["macs"]
    found = search_schedule(costs, macs[correction], num_steps, cap, min(warmup, num_steps), max_skip)
    if found is None:  # no schedule fits the budget: the best of the cheapest that keep the warm-up and max_skip
        w = min(warmup, num_steps)
        cheapest = regular_schedule(num_steps, max_skip + 1, w - 1, FORECAST)  # fewest full steps, only forecasts
        floor = schedule_macs(cheapest, macs[correction])
        found = search_schedule(costs, macs[correction], num_steps, floor * (1 + 1e-9), w, max_skip)
        return (cheapest if found is None else found[0]), math.nan  # NaN: the budget is not met
    return found


# the runtime


class _Factors:
    """The forecast factors of one cached module (one list per output element; None for an element that is
    None), allocated at the first full step and updated in place from then on, across generations of one
    shape too: a generation's first full step restarts them (no order is set), so storage never changes."""

    def __init__(self):
        self.elements: list[list[torch.Tensor] | None] | None = None
        self.is_tuple = False

    def refresh(self, output, inv_distance: torch.Tensor, valid: torch.Tensor, order: int) -> None:
        outputs = output if isinstance(output, tuple) else (output,)
        if self.elements is None or len(self.elements) != len(outputs) or any(
                (f is None) != (y is None) or (f is not None and f[0].shape != y.shape)
                for f, y in zip(self.elements, outputs)):
            self.is_tuple = isinstance(output, tuple)
            self.elements = [None if y is None else [torch.zeros_like(y) for _ in range(order + 1)] for y in outputs]
        for factors, y in zip(self.elements, outputs):
            if factors is not None:
                refresh_factors_(factors, y, inv_distance, valid)

    def forecast(self, weights: torch.Tensor):
        outputs = tuple(None if f is None else weigh_by(f, weights) for f in self.elements)
        return outputs if self.is_tuple else outputs[0]


class ForecastModule(torch.nn.Module):
    """Stands in for a cached module while the method is applied: runs it (and refreshes its factors) on full
    steps, returns the factors' forecast on the others, and on corrected steps (an image MLP) runs it on
    the K chosen tokens and corrects the forecast with them. The wrapped module stays a registered child."""

    def __init__(self, module: torch.nn.Module, state: "_State", name: str, corrects: bool):
        super().__init__()
        self.module = module
        self.state = state
        self.name = name
        self.corrects = corrects
        self.cache = _Factors()
        state.caches.append(self.cache)

    def forward(self, *args, **kwargs):
        s = self.state
        if s.bypass or s.action == FULL or not s.keep_cache:
            out = self.module(*args, **kwargs)
            if s.keep_cache and not s.bypass:
                self.cache.refresh(out, s.inv_distance, s.valid, s.order)
            return out
        forecast = self.cache.forecast(s.weights)
        if s.action == CORRECTED and self.corrects:
            if args:
                picked, args = rows(args[0], s.index), args[1:]  # [B, K, C]
            else:
                kwargs = dict(kwargs)
                picked = rows(kwargs.pop("hidden_states"), s.index)
            fresh = self.module(picked, *args, **kwargs)  # [B, K, C]
            return correct(forecast, s.index, fresh, s.labels, s.k, s.gamma)
        return forecast

    def extra_repr(self) -> str:
        return f"name={self.name!r}" + (", corrects=True" if self.corrects else "")


class _State(StepState):
    """The schedule of one generation, the per-step tensors the wrappers read, the clusters and selection."""

    def __init__(self, config: ForecastSearchConfig, clock, family, channels):
        self.caches: list[_Factors] = []
        self.channels = channels
        self.order = config.max_order
        self.k = config.num_corrected
        self.gamma = float(config.gamma) if config.correction == "cluster" else 0.0
        self.reference: int | None = None  # the reference's step count, from handle.call_overrides (forecast_steps)
        super().__init__(config, clock, family)

    def _on_new_generation(self) -> None:
        self.actions: str | None = None
        self.action = FULL
        self.keep_cache = False
        self.records: list[StepRecord] = []
        self.device: torch.device | None = None
        self.table = None  # [steps, 2 (m + 1) + 1]: weights, orders set, 1/d, per step
        self.live = None  # this step's row: `weights`, `valid` and `inv_distance` are views of it
        self.labels = self.index = self.centroids = None
        self.previous: torch.Tensor | None = None  # the noise of the last full step  [B, N, D]
        self.r = self.delta = self.freq = None

    def begin_step(self, transformer, scheduler, args, kwargs) -> None:
        self.device = hidden_states_of(args, kwargs).device
        super().begin_step(transformer, scheduler, args, kwargs)

    def _plan(self) -> None:
        if self.step == 0:
            self._start()
        if self.step >= len(self.actions):  # never a silent full step past the schedule (a budget unmet)
            raise ValueError(f"{type(self.config).__name__}: this generation runs more steps than its schedule's "
                             f"{len(self.actions)}: call the pipeline (it sets the step count), or "
                             "handle.reset(num_steps=...) on a bare transformer")
        self.action = self.actions[self.step]
        if self.keep_cache:
            self.live.copy_(self.table[self.step])
        if self.action == CORRECTED and self.config.correction == "topk" and self.labels is not None:
            self._select()
        tokens = {FULL: self.num_tokens, FORECAST: 0, CORRECTED: self.k}[self.action]
        self.records.append(StepRecord(self.step, PHASES[self.action], tokens))

    def _start(self) -> None:
        """The generation's schedule and its per-step table, checked against the run."""
        c = self.config
        steps = self.num_steps or (len(c.actions) if c.actions is not None else None)
        if steps is None and c.reads_calibration:
            steps = _parse(c.calibration)["num_steps"]
        if steps is None:
            raise ValueError(f"{type(c).__name__}: the schedule needs the step count: call the pipeline, or "
                             "handle.reset(num_steps=...) on a bare transformer")
        if c.forecast_steps is not None:  # the schedule is the reference's, whose step count the call override gave
            if self.reference is None:
                raise ValueError(f"{type(c).__name__}(forecast_steps={c.forecast_steps}) runs fewer steps than the "
                                 "reference: call the pipeline with **handle.call_overrides(reference_steps=<the full "
                                 "model's steps>), which sets them")
            planned = c.solver_steps(self.reference)
            if steps is not None and steps != planned:
                raise ValueError(f"{type(c).__name__}(forecast_steps={c.forecast_steps}) plans {planned} steps for a "
                                 f"reference of {self.reference}, and this call runs {steps}: call the pipeline with "
                                 "**handle.call_overrides(reference_steps=<the full model's steps>)")
            steps = planned
        if self.num_steps is None:  # a known step count was checked by the clock at this call
            c.check_steps(steps)
        if c.reads_calibration:
            measured = _parse(c.calibration)["guidance_scale"]
            used = self.clock.guidance_scale
            if (used is not None and measured is not None and not c.reuse_calibration
                    and abs(float(used) - float(measured)) > 1e-9):
                raise ValueError(f"{type(c).__name__}.calibration was measured at guidance_scale={measured}, this call "
                                 f"uses {used}: calibrate at this guidance scale, or set reuse_calibration=True")
        reference = steps if c.forecast_steps is None else self.reference
        self.actions = c.plan(reference, self.num_tokens)
        if c.actions is None and c.budget > 0:
            _warn_if_short(c, reference, self.num_tokens, self.actions)
        self.keep_cache = FULL * len(self.actions) != self.actions
        if self.keep_cache:
            self.table = torch.tensor(self._rows(), dtype=torch.float32).to(self.device)  # one copy per generation
            self.live = torch.zeros(self.table.shape[1], device=self.device)
            m = self.order + 1
            self.weights, self.valid, self.inv_distance = self.live[:m], self.live[m:2 * m], self.live[2 * m]

    def _rows(self) -> list[list[float]]:
        """Per step: the forecast weights (orders not yet set weigh 0), the orders set before a full step's
        refresh, and 1/d (d: steps since the previous full step; 0 at the first)."""
        m, out, last, known = self.order + 1, [], None, 0
        for step, action in enumerate(self.actions):
            if action == FULL:
                valid = [1.0 if i < known else 0.0 for i in range(m)]
                out.append([0.0] * m + valid + [0.0 if last is None else 1.0 / (step - last)])
                known, last = min(known + 1, m), step
            else:
                w = self.config.forecast_weights(step - last)
                out.append([w[i] if i < known else 0.0 for i in range(m)] + [0.0] * m + [0.0])
        return out

    def observe(self, transformer, output) -> None:
        """At a full step: the k-means clusters of the output's noise (CAT's features: noise plus position),
        the representatives, and the relative noise since the previous full step (CAT's r)."""
        sample = output[0] if isinstance(output, tuple) else output.sample
        noise = noise_channels(self.family.to_tokens(transformer, sample), self.channels).float()  # [B, N, D]
        if self.config.correction == "none":
            return
        cat_defaults = CATConfig()
        feats = core.cluster_features(noise, self.grid, cat_defaults.cluster_feature_weight)  # [B, N, D]
        k = min(self.k, feats.shape[1])
        if self.centroids is None or self.centroids.shape != (feats.shape[0], k, feats.shape[2]):
            self.centroids = distinct_centroids(feats, k, torch.Generator().manual_seed(0))
        # a fixed number of Lloyd steps from the previous full step's centroids: the same MACs at every full
        # step (as the MAC counter counts them offline) and nothing read back
        labels, self.centroids = lloyd_l1(feats, self.centroids, KMEANS_ITERS, early_stop=False)
        self.labels = self._into(self.labels, labels)
        if self.config.correction == "cluster":
            self.index = self._into(self.index, nearest_members(feats, labels, self.centroids))
        else:
            previous = noise if self.previous is None or self.previous.shape != noise.shape else self.previous
            self.delta = noise - previous  # [B, N, D]
            self.r = torch.linalg.vector_norm(self.delta, dim=-1)  # [B, N]
            self.freq = torch.zeros_like(self.r)
            self.previous = noise
            if self.index is None or self.index.shape != (noise.shape[0], self.k):
                self.index = torch.zeros(noise.shape[0], self.k, dtype=torch.long, device=noise.device)

    @staticmethod
    def _into(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        """`value` copied into `buffer` (kept: its storage never changes within a generation), or `buffer` anew."""
        if buffer is None or buffer.shape != value.shape:
            return value.clone()
        return buffer.copy_(value)

    def _select(self) -> None:
        """CAT's pruned-step rule at K tokens (its defaults: cluster share, quotas, staleness decay)."""
        c = CATConfig()
        k = self.centroids.shape[1]
        saliency = core.cluster_saliency(self.delta, self.labels, k)  # [B, k]
        unit = max(1, round(c.quota_unit * self.k))
        per_rank = core.quota_per_rank(k, c.cluster_quotas, unit, self.r.device)
        chosen = core.select_pruned(self.r, saliency, self.labels, self.freq, self.k, round(c.cluster_share * self.k),
                                    per_rank)  # [B, K]
        self.index.copy_(chosen)
        self.freq = core.update_staleness(self.freq, chosen, c.staleness_decay)


class _StepHook(StepHook):
    """On the transformer: plans each step before the call; after a full step, clusters and scores."""

    def post_forward(self, module, output):
        state = self.state
        if not state.bypass and state.keep_cache and state.action == FULL and state.step >= 0:
            state.observe(module, output)
        return super().post_forward(module, output)


class ForecastSearchHandle(MethodHandle):
    """An applied budgeted forecasting cache; `remove()` restores the model exactly."""

    def __init__(self, target, config: ForecastSearchConfig):
        super().__init__(target, config)
        self.family = family_for(self.transformer, "ForecastSearch", STEP_CACHED)
        tconfig = self.transformer.config
        channels = (getattr(tconfig, "in_channels", None), getattr(tconfig, "out_channels", None))
        self.state = _State(config, self.clock, self.family, channels)
        self.modules: list[ForecastModule] = []

    def _new_generation(self) -> None:
        if hasattr(self, "state"):
            self.state.new_generation()

    def _install(self) -> None:
        transformer = self.transformer
        check_no_chunking(transformer, "ForecastSearch")
        self.state.caches.clear()
        self.modules = []
        for name, module in self.family.find(transformer, STEP_CACHED):
            attr = name.rsplit(".", 1)[1]
            wrapper = ForecastModule(module, self.state, name, corrects=attr == "ff")
            swap_in(transformer, name, wrapper, self._undo)
            self.modules.append(wrapper)
        attach_hook(transformer, _StepHook(self.state, getattr(self._pipe, "scheduler", None)), self._undo, HOOK_NAME)
        self.clock.observe_pipeline(self._undo)
        self._undo.append(self._drop)

    def call_overrides(self, reference_steps: int | None = None) -> dict:
        overrides = super().call_overrides(reference_steps)
        if reference_steps is not None:
            self.state.reference = reference_steps  # the schedule of `forecast_steps` is planned for it
        return overrides

    def _drop(self) -> None:
        for cache in self.state.caches:
            cache.elements = None
        self.state.new_generation()

    @property
    def stats(self) -> ForecastStats:
        """Full, forecast and corrected steps of the current or last generation."""
        return ForecastStats(steps=list(self.state.records))

    def cache_bytes(self) -> int:
        s = self.state
        return tensor_bytes([c.elements for c in s.caches], s.labels, s.index, s.centroids, s.previous, s.freq,
                            s.table)


ForecastSearchConfig.handle = ForecastSearchHandle


# the calibration


def measure(pipe, prompts: list[str], generators: list, num_steps: int, config: ForecastSearchConfig,
            call_kwargs: dict) -> dict:
    """Segment costs of every kind (see the module docstring), MACs per action, and what they hold for. The
    prompts run `CALIBRATION_BATCH` at a time (every module output of a batch's trajectory is held)."""
    call_kwargs = {"output_type": "latent", **call_kwargs}
    kinds = {"none": FORECAST, "cluster": CORRECTED, "topk": CORRECTED}
    sums = {kind: [[0.0] * config.max_skip for _ in range(num_steps)] for kind in kinds}
    counts = {kind: [[0] * config.max_skip for _ in range(num_steps)] for kind in kinds}
    shapes = None
    for start in range(0, len(prompts), CALIBRATION_BATCH):
        batch = prompts[start:start + CALIBRATION_BATCH]
        states = [None if g is None else g.get_state() for g in generators[start:start + CALIBRATION_BATCH]]
        teacher, outputs, final, shapes = _trajectory(pipe, batch, states, num_steps, config, call_kwargs)
        power = final.double().pow(2).flatten(1).sum(1)  # [P]
        for kind, char in kinds.items():
            for gap in range(2, config.max_skip + 2):
                for offset in range(gap):
                    actions = regular_schedule(num_steps, gap, offset, char)
                    setting = dataclasses.replace(config, actions=actions, budget=0.5, calibration=None,
                                                  correction=kind, forecast_steps=None)
                    deviation = _forced(pipe, batch, states, setting, teacher, outputs, final, call_kwargs)
                    for i, skipped, _ in segments(actions):
                        if skipped == gap - 1:
                            d = deviation[i + skipped + 1] - deviation[i]  # [P, C, H, W]
                            share = d.double().pow(2).flatten(1).sum(1) / power  # [P]
                            sums[kind][i][skipped - 1] += float(share.sum())
                            counts[kind][i][skipped - 1] += len(batch)
    costs = {kind: [[s / n if n else None for s, n in zip(srow, nrow)] for srow, nrow in zip(sums[kind], counts[kind])]
             for kind in kinds}
    guidance = getattr(pipe, "_guidance_scale", call_kwargs.get("guidance_scale"))
    return {"num_steps": num_steps, "guidance_scale": guidance, "prompts": len(prompts),
            "settings": {**{f: getattr(config, f) for f in CALIBRATED_FIELDS}, "max_skip": config.max_skip,
                         "warmup_steps": config.warmup_steps},
            "macs": count_macs(pipe.transformer, shapes, config), "costs": costs}


def _call(pipe, prompts: list[str], states: list, num_steps: int, call_kwargs: dict) -> torch.Tensor:
    """The pipeline's final latents for `prompts`, each from a generator in its recorded state."""
    generators = None
    if any(state is not None for state in states):
        generators = []
        for state in states:
            generators.append(torch.Generator())
            generators[-1].set_state(state)
    return pipe(prompts, num_inference_steps=num_steps, generator=generators, **call_kwargs).images


def _trajectory(pipe, prompts, states, num_steps, config, call_kwargs):
    """The full model's run: every transformer input, every cached module's output at every step, the final
    latents, and the first call's arguments (for counting MACs)."""
    handle = ForecastSearchHandle(pipe, dataclasses.replace(config, actions=FULL * num_steps, calibration=None,
                                                            budget=0.5, forecast_steps=None)).install()
    outputs: dict[str, dict[int, object]] = {}
    inputs: list[torch.Tensor] = []
    first: list = []

    def record(module, args, kwargs):
        if kwargs.get("skip_layers") is None:
            inputs.append(hidden_states_of(args, kwargs).detach().clone())
            if not first:
                first.append((args, kwargs))

    final = _intercepted(pipe, handle, lambda name: outputs.setdefault(name, {}), False, record,
                         lambda: _call(pipe, prompts, states, num_steps, call_kwargs))
    return inputs, outputs, final, _meta_shapes(*first[0])


def _forced(pipe, prompts, states, config, teacher, outputs, final, call_kwargs) -> list[torch.Tensor]:
    """One teacher-forced run of `config`'s schedule: each call gets the full model's input of its step, full
    steps replay the recorded outputs. Returns the latents' deviation from the full model's at every step's
    input and at the end (the deviation the schedule's own updates accumulated), one row per prompt: a CFG
    batch holds each latent twice, [uncond..., cond...], and the cond rows are taken."""
    handle = ForecastSearchHandle(pipe, config).install()
    deviation: list[torch.Tensor] = []
    rows_ = final.shape[0]

    def force(module, args, kwargs):
        if kwargs.get("skip_layers") is not None:
            return None
        x = hidden_states_of(args, kwargs)
        step = len(deviation)
        deviation.append((x - teacher[step])[-rows_:].detach())
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": teacher[step].clone()}
        return (teacher[step].clone(), *args[1:]), kwargs

    out = _intercepted(pipe, handle, outputs.__getitem__, True, force,
                       lambda: _call(pipe, prompts, states, len(teacher), call_kwargs))
    return deviation + [(out - final).detach()]


def _intercepted(pipe, handle, store, replay: bool, pre_hook, call):
    """`call()` with the installed handle's modules recording (or replaying) their outputs in `store(name)` and
    `pre_hook` on the transformer's input; every interception and the handle are undone afterwards."""
    undo: list = []
    try:
        for wrapper in handle.modules:
            _intercept(wrapper, handle.state, store(wrapper.name), undo, replay=replay)
        hook = pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            return call()
        finally:
            hook.remove()
    finally:
        while undo:
            undo.pop()()
        handle.remove()


def _intercept(wrapper: ForecastModule, state: _State, store: dict, undo: list, replay: bool) -> None:
    """The wrapped module records its full steps' outputs, or replays them instead of running."""
    module = wrapper.module
    original = module.forward

    def forward(*args, **kwargs):
        if state.action == FULL and not state.bypass:
            if replay:
                return store[state.step]
            out = original(*args, **kwargs)
            store[state.step] = out
            return out
        return original(*args, **kwargs)

    set_instance_attr(module, "forward", forward, undo)


def _meta_shapes(args, kwargs):
    """A transformer call's arguments with every tensor as an empty tensor of its shape on `meta`."""
    def meta(value):
        if isinstance(value, torch.Tensor):
            return torch.empty(value.shape, dtype=value.dtype, device="meta")
        if isinstance(value, dict):
            return {k: meta(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(meta(v) for v in value)
        return value

    return meta(tuple(args)), meta(dict(kwargs))


def count_macs(transformer: torch.nn.Module, shapes, config: ForecastSearchConfig) -> dict[str, int]:
    """MACs of one call of the model without the method ("model"), and of each action with it per kind of
    correction (a full step clusters the output when there is one), counted by FlopCounterMode (FLOPs / 2) on a
    meta copy of `transformer` with the calibration call's shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = shapes
    with torch.device("meta"):
        meta = type(transformer).from_config(transformer.config).eval()

    def macs() -> int:
        with FlopCounterMode(display=False) as counter:
            meta(*args, **kwargs)
        return counter.get_total_flops() // 2

    out = {"model": macs()}
    with torch.no_grad():
        for kind in CORRECTIONS:
            actions = "FFf" if kind == "none" else "FFfc"
            setting = dataclasses.replace(config, actions=actions, correction=kind, calibration=None, budget=0.5)
            handle = ForecastSearchHandle(meta, setting).install()
            try:
                handle.reset(cfg_pairs=True, num_steps=len(actions))
                counted = [macs() for _ in actions]
            finally:
                handle.remove()
            out[kind] = {FULL: counted[1], FORECAST: counted[2], CORRECTED: counted[-1]}
    return out


