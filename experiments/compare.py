"""`task=compare`: one method in one variant of the fair comparison, at every compute target.

A cell of `sweep=peers` is a (method, variant) pair. Variants:

- `authors`: the method's authors' setting for the model's architecture (`<Config>.authors(family, steps)`,
  applied over the method's YAML), with its compute knob moved to reach each target;
- `shared_warmup`: the same with CAT's warm-up (the authors' 8 of 28 steps, scaled), so that "which tokens
  or steps to skip" can be told apart from "how many early steps to keep"; not applicable to a method
  without a warm-up (fewer steps);
- `tuned`: per target, the best of a grid of second knobs (the YAML's `tune`, e.g. TaylorSeer's order and
  warm-up) by fidelity to the full model on the calibration prompts, each with its compute knob moved to
  the target.

The compute knob (the YAML's `knob`) is either continuous (`knob_range`: set to the target by a
bracketing search, `experiments.tuning.find_knob`) or discrete (`levels`: the two real values that
bracket the target; their per-prompt mixture is formed in the report, `experiments.matched`). The search
reads executed-MACs reductions counted offline by the MAC counter for methods whose per-step token counts
are known before running, else counted while the method runs on the calibration prompts. Nothing is ever
chosen on an evaluation prompt.

The chosen settings are then run on the evaluation prompts (the run's `data`), with executed MACs counted
on every batch that makes the evaluated images (per prompt: the batch's count over its size), PSNR and SSIM
against the full model's images, and the prompt-adherence judge where the prompt set has one. A cell's
files: `compare.json` (the plan: targets, the settings chosen for each and how), `cells/<key>.json` and
`cells/<key>/` (per-prompt values and images of one evaluated setting) and `calibration/` (the same for every
calibration measurement). A resumed run, or another cell asking for the same setting on the same prompts,
reuses them (they are also kept beside the full model's cached images). The sweep's report (`experiments.targets`) pairs every method with CAT at the
same target and variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from .sinks import read_json, write_json

log = logging.getLogger(__name__)

VARIANTS = ("authors", "tuned", "shared_warmup")
PLAN = "compare.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the method's YAML says about reaching a target: the compute knob, its domain, the tuning grid."""

    knob: str
    levels: tuple = ()
    knob_range: tuple[float, float] | None = None
    tune: dict = dataclasses.field(default_factory=dict)

    @property
    def continuous(self) -> bool:
        return self.knob_range is not None

    @classmethod
    def of(cls, method: DictConfig | dict) -> "Plan":
        m = OmegaConf.to_container(method, resolve=True) if OmegaConf.is_config(method) else dict(method)
        name = m.get("name")
        if not m.get("knob"):
            raise ValueError(f"method={name}: task=compare needs the method's compute knob (`knob:` in "
                             f"conf/method/{name}.yaml)")
        knob_range = m.get("knob_range")
        if knob_range is not None and (len(knob_range) != 2 or not knob_range[0] < knob_range[1]):
            raise ValueError(f"method={name}: knob_range={knob_range} must be [low, high] with low < high")
        levels = tuple(m.get("levels") or ())
        if knob_range is None and len(levels) < 2:
            raise ValueError(f"method={name}: task=compare needs `knob_range: [low, high]` (a continuous knob) or at "
                             f"least two `levels` (a discrete one) in conf/method/{name}.yaml")
        tune = {k: list(v) for k, v in (m.get("tune") or {}).items() if v is not None}
        return cls(m["knob"], levels, tuple(knob_range) if knob_range is not None else None, tune)


def setting_key(config) -> str:
    """A short digest of a method setting (its type and every field)."""
    text = f"{type(config).__module__}.{type(config).__qualname__}{json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(config, base, knob: str) -> str:
    """A setting as a reader wants it: the knob, then every field that differs from the variant's base."""
    value = getattr(config, knob)
    parts = [f"{knob}={value:.4g}" if isinstance(value, float) else f"{knob}={value}"]
    for f in dataclasses.fields(config):
        if f.name != knob and getattr(config, f.name) != getattr(base, f.name):
            parts.append(f"{f.name}={getattr(config, f.name)}")
    return ", ".join(parts)


def variant_base(method, variant: str, family: str, num_steps: int, shared_warmup: int | None = None):
    """The variant's setting before its compute knob moves: the authors' (over the YAML's), with the reference
    method's warm-up (`shared_warmup`, CAT's) for variant `shared_warmup`; None when the variant does not apply
    to the method."""
    cls = type(method)
    try:
        authors = cls.authors(family, num_steps)
    except (NotImplementedError, AttributeError):
        log.warning("%s declares no authors' setting: the YAML's setting stands for it", cls.__name__)
        authors = {}
    base = dataclasses.replace(method, **authors)
    if variant == "shared_warmup":
        if not getattr(cls, "has_warmup", True) or not hasattr(base, "warmup_steps"):
            return None
        if shared_warmup is None:
            raise ValueError("variant shared_warmup needs the reference method's warm-up")
        return dataclasses.replace(base, warmup_steps=shared_warmup)
    return base


def reference_warmup(reference: str, family: str, num_steps: int) -> int | None:
    """The warm-up of the reference method's authors' setting (`paired_reference`: CAT's 8 of 28 steps)."""
    import cat

    try:
        return cat.METHODS[reference].authors(family, num_steps).get("warmup_steps")
    except (KeyError, NotImplementedError):
        return None


def candidates(base, plan: Plan, variant: str, num_steps: int, num_tokens: int) -> list:
    """The settings searched at each target: the base, and for `tuned` every combination of the grid
    (invalid ones left out, duplicates removed)."""
    out, seen = [], set()
    combos = [{}] if variant != "tuned" else [{}] + [dict(zip(plan.tune, values))
                                                      for values in itertools.product(*plan.tune.values())]
    for combo in combos:
        try:
            config = dataclasses.replace(base, **combo)
            config.check_steps(num_steps)
        except (TypeError, ValueError) as err:
            log.info("tuning grid: %s left out (%s)", combo, err)
            continue
        key = setting_key(config)
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out


class Bench:
    """Runs method settings on a fixed prompt list and measures them: executed MACs per prompt (counted on
    the batches that make the images, `experiments.generate.generate` with its `macs.jsonl`), PSNR / SSIM
    against the full model, the adherence judge.

    Each setting's images and `<key>.json` are kept in `shared`, beside the full model's cached images of the
    same prompts (same model, seed, batches and code), so that another cell of the sweep asking for the same
    setting (CAT's authors' and shared-warm-up variants, a tuned setting equal to the authors') reads it
    instead of running it again; the run's own copy goes to `folder`."""

    def __init__(self, cfg, pipe, kwargs: dict, prompts, full_folder: Path, folder: Path, judge=None):
        self.cfg, self.pipe, self.kwargs, self.prompts = cfg, pipe, kwargs, prompts
        self.full_folder, self.folder, self.judge = full_folder, folder, judge
        self.shared = full_folder.with_name(full_folder.name + "-settings")
        self.memo: dict[str, dict] = {}
        self._full = None

    def _generate(self, folder: Path, kwargs: dict, desc: str) -> tuple[list, list[float]]:
        """The prompts' images in `folder` (generated where missing, whole batches, counted) and each
        prompt's transformer MACs (its batch's count over the batch's size)."""
        from PIL import Image

        from .generate import batches, generate, image_path
        from .macs import read_batch_records

        generate(self.pipe, batches(self.prompts, self.cfg.batch_size), folder, self.cfg.seed, kwargs, desc=desc,
                 macs=True)
        per_prompt = {i: r["transformer_macs_per_prompt"] for r in read_batch_records(folder).values()
                      for i in r["indices"]}
        images = []
        for p in self.prompts:
            with Image.open(image_path(folder, p.index)) as image:
                images.append(image.convert("RGB"))
        return images, [per_prompt[p.index] for p in self.prompts]

    def full(self) -> tuple[list, list[float]]:
        """The full model's images and per-prompt MACs (the shared cache, generated where missing)."""
        if self._full is None:
            self._full = self._generate(self.full_folder, self.kwargs, "full model")
        return self._full

    def _stored(self, key: str) -> dict | None:
        from .generate import link_images

        indices = [p.index for p in self.prompts]
        for folder in (self.folder, self.shared):
            row = read_json(folder / f"{key}.json")
            if row is not None and row.get("indices") == indices:
                if folder != self.folder:
                    link_images(folder / key, self.folder / key, indices)
                    write_json(self.folder / f"{key}.json", row)
                return row
        return None

    def run(self, config, label: str = "") -> dict:
        import cat

        from .generate import link_images
        from .metrics.fidelity import fidelity

        key = setting_key(config)
        if key in self.memo:
            return self.memo[key]
        if (row := self._stored(key)) is not None:
            self.memo[key] = {**row, "setting": label or row.get("setting", "")}
            return self.memo[key]
        full, full_macs = self.full()
        log.info("compare: %s on %d prompt(s): %s", type(config).name, len(self.prompts), label or key)
        with cat.apply(self.pipe, config) as handle:
            kwargs = {**self.kwargs, **handle.call_overrides(self.kwargs["num_inference_steps"])}
            images, macs = self._generate(self.shared / key, kwargs, type(config).name)
        fid = fidelity(images, full)["per_image"]
        row = {"key": key, "setting": label, "method": type(config).name,
               "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
               "indices": [p.index for p in self.prompts], "transformer_macs": macs, "transformer_macs_full": full_macs,
               "reduction": [1.0 - m / f for m, f in zip(macs, full_macs)], "psnr": fid["psnr"], "ssim": fid["ssim"]}
        if self.judge is not None:
            row["adherence"] = [float(self.judge(img, p.text)["score"]) for img, p in zip(images, self.prompts)]
        write_json(self.shared / f"{key}.json", row)  # after its images: its presence says the setting is complete
        link_images(self.shared / key, self.folder / key, row["indices"])
        write_json(self.folder / f"{key}.json", row)
        self.memo[key] = row
        return row

    def reduction(self, config, label: str = "") -> float:
        return float(np.mean(self.run(config, label)["reduction"]))

    def psnr(self, config, label: str = "") -> float:
        return float(np.mean(self.run(config, label)["psnr"]))


def offline_reduction(model: dict, config, num_steps: int, num_tokens: int) -> float | None:
    """The executed-MACs reduction the MAC counter finds offline (None: the method decides while it runs)."""
    if config.offline_schedule(num_steps, num_tokens) is None:
        return None
    from .config_files import transformer_config
    from .macs import report_for_model

    return report_for_model(transformer_config(model), config).macs_reduction


def choose(cfg: DictConfig, method, calibration: Bench, model: dict, family: str, num_tokens: int) -> dict:
    """The variant's settings for every target, chosen on the calibration prompts:
    {target: {"settings": [(config, label)], "weights": [...], "score": calibration PSNR or None, "how": str}};
    None when the variant does not apply to the method."""
    from .matched import mixture_weight
    from .tuning import bracket_knob, find_knob

    plan = Plan.of(cfg.method)
    variant, steps = cfg.compare.variant, int(cfg.model.steps)
    base = variant_base(method, variant, family, steps, reference_warmup(cfg.paired_reference, family, steps))
    if base is None:
        return None
    pool = candidates(base, plan, variant, steps, num_tokens)
    tol = float(cfg.compare.tolerance)

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
    learned: dict = {}  # the offline search's last miss (see offline_search)
    for target in cfg.compare.targets:
        options = []
        for config in pool:
            if plan.continuous:
                lo, hi = plan.knob_range
                found = None
                if config.offline_schedule(steps, num_tokens) is not None:
                    found = offline_search(lambda v, c=config: with_knob(c, v), reduction, lo, hi, float(target), tol / 2,
                                           steps, num_tokens, learned=learned)
                if found is None:
                    found = find_knob(lambda v, c=config: _finite(reduction(with_knob(c, v))), lo, hi, float(target),
                                      tol / 2)
                if found is None:
                    continue
                settings, weights = [with_knob(config, found.value)], [1.0]
            else:
                reductions = {v: r for v in plan.levels if np.isfinite(r := reduction(with_knob(config, v)))}
                found = bracket_knob(reductions, float(target), tol / 2)
                if found is None:
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
                return sum(w * calibration.psnr(s, describe(s, base, plan.knob)) for s, w in zip(option[1], option[2]))

            scored = [(score(o), i, o) for i, o in enumerate(options)]
            best_score, _, best = max(scored, key=lambda t: (t[0], -t[1]))
            how = f"best calibration PSNR {best_score:.2f} dB of {len(options)} settings"
        elif variant == "tuned":
            best, best_score, how = options[0], None, f"the only one of {len(pool)} settings that reaches the target"
        else:
            best, best_score, how = options[0], None, "the variant's setting"
        chosen[float(target)] = {"settings": [(s, describe(s, base, plan.knob)) for s in best[1]],
                                 "weights": best[2], "score": best_score, "how": how}
    return chosen


def token_share_reduction(config, num_steps: int, num_tokens: int) -> float:
    """1 - the share of image tokens the method recomputes over the schedule (its offline schedule): a guide
    for the knob search that costs no model call; the MAC counter has the last word."""
    schedule = config.offline_schedule(num_steps, num_tokens)
    return 1.0 - sum(schedule) / (num_steps * num_tokens)


def offline_search(config_of, reduction, lo: float, hi: float, target: float, tol: float, num_steps: int,
                   num_tokens: int, rounds: int = 4, learned: dict | None = None):
    """The knob search for a method whose token schedule is known before it runs: the knob is found on the
    token-share reduction (no model call), the MAC counter counts that setting, and the token-share target is
    moved by the counter's miss; a few counts instead of one per bisection step. `learned` carries the last
    miss from one search to the next (the token share and the MACs differ by a nearly constant offset for one
    method), so most searches need one count. None when this does not reach the target within `tol` (the
    caller then bisects on counted MACs)."""
    from .tuning import Found, find_knob

    share = lambda v: _finite(_safe(lambda: token_share_reduction(config_of(v), num_steps, num_tokens)))  # noqa: E731
    learned = {} if learned is None else learned
    aim, best = target + learned.get("offset", 0.0), None
    for _ in range(rounds):
        guess = find_knob(share, lo, hi, aim, tol / 4, max_iter=40)
        if guess is None:
            break
        counted = Found(guess.value, reduction(config_of(guess.value)))
        if best is None or abs(counted.reduction - target) < abs(best.reduction - target):
            best = counted
        learned["offset"] = aim + (target - counted.reduction) - target
        if abs(counted.reduction - target) <= tol:
            break
        aim += target - counted.reduction
    return best if best is not None and abs(best.reduction - target) <= tol else None


def _safe(fn) -> float:
    try:
        return fn()
    except ValueError:
        return float("nan")


def _finite(value: float) -> float:
    return value if np.isfinite(value) else -1.0  # an invalid knob value counts as out of reach


def compare_task(cfg: DictConfig, run_dir: Path, method) -> dict:
    """`task=compare`: chooses the variant's settings on the calibration prompts, evaluates them on the
    evaluation prompts, and writes the cell's plan and per-prompt values (see the module docstring)."""
    from .checks import JUDGED, token_geometry
    from .generate import call_kwargs, full_image_cache, run_prompts
    from .pipelines import load_pipeline, pick_device, pick_dtype

    model = OmegaConf.to_container(cfg.model, resolve=True)
    _, rows, cols = token_geometry(model)
    num_tokens = rows * cols
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(model, device, dtype)
    kwargs = call_kwargs(cfg)
    judge = None
    if cfg.data.name in JUDGED:
        import importlib

        judge = importlib.import_module(f"experiments.{cfg.data.name}").judge

    calib_cfg = calibration_config(cfg)
    calibration = Bench(calib_cfg, pipe, kwargs, run_prompts(calib_cfg), full_image_cache(calib_cfg, kwargs, dtype, device),
                        run_dir / "calibration", judge=None)
    chosen = choose(cfg, method, calibration, model, cfg.model.family, num_tokens)
    metrics: dict = {"variant": cfg.compare.variant, "applicable": chosen is not None}
    chosen = chosen or {}
    evaluation = Bench(cfg, pipe, kwargs, run_prompts(cfg), full_image_cache(cfg, kwargs, dtype, device),
                       run_dir / "cells", judge=judge)
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
        psnr = sum(w * float(np.mean(evaluation.memo[k]["psnr"])) for k, w in zip(keys, choice["weights"]))
        metrics[f"psnr_at_{round(100 * target)}"] = psnr
    plan_out["cells"] = sorted(evaluation.memo)
    write_json(run_dir / PLAN, plan_out)
    metrics.update({"targets_reached": len(chosen), "cells_evaluated": len(evaluation.memo),
                    "calibration_runs": len(calibration.memo)})
    return metrics


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
