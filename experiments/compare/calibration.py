"""The variant's settings for every compute target, chosen on the calibration prompts: the knob search
(`search`) on offline MAC counts where the method's token schedule is known before it runs, else on the
executed MACs of calibration runs (`bench`); for the `tuned` variant the best of its grid by the objective
metric."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging

import numpy as np
from omegaconf import DictConfig, open_dict

from ..base.models import transformer_config
from ..metrics.registry import objective
from ..run.macs import report_for_model
from .bench import Bench
from .matched import mixture_weight, saves_nothing
from .search import bracket_knob, find_knob, finite, offline_search, warmup_bound
from .settings import (Plan, candidates, describe, kept_fields, reference_warmup, setting_key,
                       variant_base)

log = logging.getLogger(__name__)


def offline_reduction(model: dict, config, num_steps: int, num_tokens: int) -> float | None:
    """The executed-MACs reduction the MAC counter finds offline (None: the method decides while it runs),
    counted once per model and setting in a process (a sweep's cells share their counts)."""
    if config.offline_schedule(num_steps, num_tokens) is None:
        return None
    model = transformer_config(model)
    try:  # the cache's key: the model as JSON (a config from conf/ is plain JSON) and the frozen setting
        key = json.dumps(model, sort_keys=True)
        hash(config)
    except TypeError:  # a value JSON or hash cannot take: counted without the cache
        return report_for_model(model, config).macs_reduction
    return _counted(key, config)


@functools.lru_cache(maxsize=4096)
def _counted(model_json: str, config) -> float:
    return report_for_model(json.loads(model_json), config).macs_reduction


def tuning_pool(cfg: DictConfig, method, family: str, num_tokens: int) -> tuple[Plan, object, list]:
    """The variant's plan (its tuning grid without the fields `compare.keep` keeps), its base setting (None when
    the variant does not apply to the method) and the candidate settings searched at each target."""
    plan, variant, steps = Plan.of(cfg.method), cfg.compare.variant, int(cfg.model.steps)
    keep = kept_fields(cfg, plan.knob)
    plan = dataclasses.replace(plan, tune={k: v for k, v in plan.tune.items() if k not in keep})
    base = variant_base(method, variant, family, steps, reference_warmup(cfg.paired_reference, family, steps), keep)
    return plan, base, [] if base is None else candidates(base, plan, variant, steps, num_tokens)


def choose(cfg: DictConfig, method, calibration: Bench, model: dict, family: str, num_tokens: int) -> dict:
    """The variant's settings for every target, chosen on the calibration prompts:
    {target: {"settings": [(config, label)], "weights": [...], "score": the calibration objective or None,
    "how": str}}; None when the variant does not apply to the method.

    What each candidate measured is kept for the next target (the knob values it ran and their reductions,
    the offline search's last miss), per candidate and never across candidates: a setting's search then
    depends on the setting and the targets alone, so the same setting in another variant's cell (CAT's
    authors' and shared-warm-up variants, a tuned candidate equal to the shared warm-up) lands on the same
    knob values and reads their runs instead of repeating them. A target above a candidate's warm-up bound
    (`search.warmup_bound`) is skipped without a run."""
    goal = objective()
    variant, steps = cfg.compare.variant, int(cfg.model.steps)
    plan, base, pool = tuning_pool(cfg, method, family, num_tokens)
    if base is None:
        return None
    tol = float(cfg.compare.tolerance)
    # a search measured on calibration runs stops at two settings this close around the target (about one whole
    # step of the schedule apart at most), which matched compute mixes per prompt, as it mixes a discrete knob's
    span = max(4 * tol, 1.5 / steps)

    def with_knob(config, value):
        return dataclasses.replace(config, **{plan.knob: value})

    def reduction(config) -> float:
        try:
            config.check_steps(steps)
            config.check_tokens(num_tokens)
        except ValueError:
            return float("nan")
        r = offline_reduction(model, config, steps, num_tokens)
        return r if r is not None else calibration.reduction(config, describe(config, base, plan.knob))

    chosen: dict = {}
    known = {setting_key(c): {} for c in pool}  # per candidate: {knob value: reduction} measured so far
    learned = {setting_key(c): {} for c in pool}  # per candidate: the offline search's last miss (offline_search)
    for target in cfg.compare.targets:
        options = []
        for config in pool:
            if float(target) - tol / 2 > warmup_bound(config, steps):
                continue
            mine = setting_key(config)
            if plan.continuous:
                lo, hi = plan.knob_range
                found = None
                if config.offline_schedule(steps, num_tokens) is not None:
                    found = offline_search(lambda v, c=config: with_knob(c, v), reduction, lo, hi, float(target), tol / 2,
                                           steps, num_tokens, learned=learned[mine])
                if found is not None:
                    found = (found,)
                elif find_knob(lambda v, c=config: finite(reduction(with_knob(c, v))), lo, hi, float(target), tol / 2,
                               known=known[mine], span=span) is not None:
                    valid = {v: r for v, r in known[mine].items() if r > -1.0}  # finite(): -1 marks a refused value
                    found = bracket_knob(valid, float(target), tol / 2)  # one value, or the two around the target
            else:
                reductions = {v: r for v in plan.levels if np.isfinite(r := reduction(with_knob(config, v)))}
                found = bracket_knob(reductions, float(target), tol / 2)
            if found is None:
                continue
            if len(found) == 2 and any(saves_nothing(f.reduction) for f in found):
                # the knob jumps from saving nothing to past the target: never mixed (matched.saves_nothing)
                log.info("compare: %s cannot reach %.0f%% fewer MACs but by mixing in a setting that saves nothing "
                         "(%s)", describe(config, base, plan.knob), 100 * float(target),
                         ", ".join(f"{plan.knob}={f.value}: {f.reduction:.1%}" for f in found))
                continue
            settings = [with_knob(config, f.value) for f in found]
            w = float(mixture_weight(float(target), found[0].reduction, found[-1].reduction)) if len(found) == 2 else 0.0
            weights = [1.0] if len(found) == 1 else [1.0 - w, w]
            options.append((config, settings, weights))
        if not options:
            log.info("compare: %s (%s) cannot reach %.0f%% fewer MACs", cfg.method.name, variant, 100 * float(target))
            continue
        if variant == "tuned" and len(options) > 1:
            def score(option):
                return sum(w * calibration.score(s, goal, describe(s, base, plan.knob))
                           for s, w in zip(option[1], option[2]))

            scored = [(score(o), i, o) for i, o in enumerate(options)]
            sign = -1.0 if goal.lower_is_better else 1.0
            best_score, _, best = max(scored, key=lambda t: (sign * t[0], -t[1]))
            unit = f" {goal.unit}" if goal.unit else ""
            how = f"best calibration {goal.short} {best_score:.2f}{unit} of {len(options)} settings"
        elif variant == "tuned":
            best, best_score, how = options[0], None, f"the only one of {len(pool)} settings that reaches the target"
        else:
            best, best_score, how = options[0], None, "the variant's setting"
        chosen[float(target)] = {"settings": [(s, describe(s, base, plan.knob)) for s in best[1]],
                                 "weights": best[2], "score": best_score, "how": how}
    return chosen


def calibration_config(cfg: DictConfig) -> DictConfig:
    """The run's config on its calibration prompts (`data.split=calibration`, `compare.calibration_prompts` of them)."""
    calib = cfg.copy()
    with open_dict(calib):
        calib.data.split = "calibration"
        calib.data.limit = int(cfg.compare.calibration_prompts)
        for key in ("shard", "num_shards", "categories"):
            if key in calib.data:
                calib.data[key] = None if key == "categories" else (0 if key == "shard" else 1)
    return calib
