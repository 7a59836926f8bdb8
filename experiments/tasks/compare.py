"""`task=compare`: one method in one variant of the fair comparison (`experiments.compare`), at every compute
target: the variant's settings chosen on the calibration prompts (`compare.calibration`), then run on the
evaluation prompts (the run's `data`) with executed MACs counted on every batch that makes the evaluated
images and the comparison's metrics (PSNR, SSIM against the full model, the adherence judge where the prompt
set has one).

A cell's files: `compare.json` (the plan: targets, the settings chosen for each and how), `cells/<key>.json`
and `cells/<key>/` (per-prompt values and images of one evaluated setting), `cells/full.json` (the full model's
own per-prompt scores: adherence) and `calibration/` (the same for every calibration measurement). The
calibration and evaluation prompts are checked to share no prompt before anything runs. A resumed run, or another cell asking for the same setting on the same
prompts, reuses them (they are also kept beside the full model's cached images). The sweep's report
(`experiments.reports.targets`) pairs every method with CAT at the same target and variant.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

import cat

from ..base.config_files import ConfigError
from ..base.devices import pick_device, pick_dtype
from ..base.files import write_json
from ..base.models import token_geometry
from ..compare.bench import Bench
from ..compare.calibration import calibration_config, choose
from ..compare.settings import VARIANTS, Plan, authors_conflicts, derived_fields, kept_fields
from ..metrics.registry import objective, ordered
from ..prompts.sets import check_disjoint
from ..run.generate import call_kwargs, full_image_cache, run_prompts
from ..run.pipelines import load_pipeline
from . import validation
from .registry import Task, register

PLAN = "compare.json"


def check(cfg: DictConfig, method) -> None:
    """A method with a compute knob, a known variant, targets in (0, 1), no sweep level; then the run's
    settings, and calibration prompts that are no evaluation prompts."""
    validation.check_method(cfg, method)
    if method is None:
        raise ConfigError("task=compare compares a method with the full model: method=none is not allowed")
    if cfg.get("level") is not None:
        raise ConfigError(f"level={cfg.level} is not allowed with task=compare: the comparison moves the method's "
                          "knob itself (leave level unset)")
    compare = cfg.get("compare") or {}
    if compare.get("variant") not in VARIANTS:
        raise ConfigError(f"compare.variant={compare.get('variant')!r} is invalid; allowed: {', '.join(VARIANTS)}")
    targets = list(compare.get("targets") or [])
    if not targets or not all(cat.is_num(t) and 0 < t < 1 for t in targets):
        raise ConfigError(f"compare.targets={targets} is invalid; allowed: a list of executed-MACs reductions in "
                          "(0, 1), e.g. [0.4, 0.5, 0.6]")
    n = compare.get("calibration_prompts")
    if not cat.is_int(n) or n < 1:
        raise ConfigError(f"compare.calibration_prompts={n!r} is invalid; allowed: an integer >= 1")
    tol = compare.get("tolerance")
    if not cat.is_num(tol) or not 0 < tol < 0.1:
        raise ConfigError(f"compare.tolerance={tol!r} is invalid; allowed: a reduction in (0, 0.1), e.g. 0.01")
    try:
        plan = Plan.of(cfg.method)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    fields = {f.name for f in dataclasses.fields(method)}
    for name in [plan.knob, *plan.tune]:
        if name not in fields:
            raise ConfigError(f"method={cfg.method.name}: `{name}` (its knob or a tuned field) is not a field of "
                              f"{type(method).__name__}; fields: {', '.join(sorted(fields))}")
    keep = compare.get("keep")
    if keep is None or isinstance(keep, str) or not all(isinstance(k, str) and k in fields for k in keep):
        raise ConfigError(f"compare.keep={keep!r} is invalid; allowed: a list of fields of {type(method).__name__} "
                          f"({', '.join(sorted(fields))})")
    conflicts = authors_conflicts(method, cfg.model.family, int(cfg.model.steps), kept_fields(cfg, plan.knob), plan.knob,
                                  derived_fields(cfg.method.config))
    if conflicts:
        said = ", ".join(f"method.config.{k}={mine!r} (the authors': {theirs!r})" for k, (mine, theirs) in conflicts.items())
        raise ConfigError(f"method={cfg.method.name}: {said}: every variant of task=compare starts from the authors' "
                          f"setting; keep yours with compare.keep=[{','.join(conflicts)}] (an ablation arm), or drop it")
    validation.check_run(cfg)
    try:  # nothing is chosen on a prompt that is evaluated
        check_disjoint(run_prompts(cfg), run_prompts(calibration_config(cfg)))
    except ValueError as err:
        raise ConfigError(f"task=compare: {err}") from err


def compare_task(cfg: DictConfig, run_dir: Path, method) -> dict:
    """Chooses the variant's settings on the calibration prompts, evaluates them on the evaluation prompts,
    and writes the cell's plan and per-prompt values (see the module docstring)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    _, rows, cols = token_geometry(model)
    num_tokens = rows * cols
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(model, device, dtype)
    kwargs = call_kwargs(cfg)
    # the comparison's metrics (`comparison=True`) that the prompt set allows; on the calibration prompts only
    # those against the full model, which the search and the tuning read
    measured = [m for m in ordered() if m.comparison and m.applies(cfg.data.name)]
    goal = objective()
    calib_cfg = calibration_config(cfg)
    calibration = Bench(calib_cfg, pipe, kwargs, run_prompts(calib_cfg), full_image_cache(calib_cfg, kwargs, dtype, device),
                        run_dir / "calibration", [m for m in measured if m.against_full])
    chosen = choose(cfg, method, calibration, model, cfg.model.family, num_tokens)
    metrics: dict = {"variant": cfg.compare.variant, "applicable": chosen is not None}
    chosen = chosen or {}
    evaluation = Bench(cfg, pipe, kwargs, run_prompts(cfg), full_image_cache(cfg, kwargs, dtype, device),
                       run_dir / "cells", measured)
    evaluation.full_scores()  # the full model's adherence per prompt, for the report's comparison with it
    plan_out = {"method": cfg.method.name, "variant": cfg.compare.variant, "knob": cfg.method.knob,
                "calibration_prompts": len(calibration.prompts), "evaluation_prompts": len(evaluation.prompts),
                "targets": {}}
    for target, choice in chosen.items():
        keys = []
        for config, label in choice["settings"]:
            row = evaluation.run(config, label)
            keys.append(row["key"])
        reductions = [float(np.mean(evaluation.memo[k]["reduction"])) for k in keys]
        plan_out["targets"][f"{target:g}"] = {"cells": keys, "labels": [label for _, label in choice["settings"]],
                                              "calibration_weights": choice["weights"],
                                              "calibration_psnr": choice["score"], "how": choice["how"],
                                              "evaluation_reductions": reductions}
        score = sum(w * float(np.mean(evaluation.memo[k][goal.name])) for k, w in zip(keys, choice["weights"]))
        metrics[f"{goal.name}_at_{round(100 * target)}"] = score
    plan_out["cells"] = sorted(evaluation.memo)
    write_json(run_dir / PLAN, plan_out)
    metrics.update({"calibration_prompts": len(calibration.prompts), "evaluation_prompts": len(evaluation.prompts),
                    "targets_reached": len(chosen), "cells_evaluated": len(evaluation.memo),
                    "calibration_runs": len(calibration.memo),
                    "calibration_first_batch_only": len(set(calibration.searched) - set(calibration.memo))})
    return metrics


register(Task("compare", "one method in one variant of the fair comparison, at every compute target (sweep=peers)",
              compare_task, check))
