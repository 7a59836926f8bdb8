"""Calibrate what a method measures once per model and step count (e.g. MagCache's magnitude ratios).

    python scripts/calibrate.py method=magcache                                   # the embedded default, 28 steps
    python scripts/calibrate.py method=magcache model=sd3_medium model.steps=28   # a real checkpoint (GPU)

Runs the method's calibration (its config's `calibrate`: for MagCache the full model in diffusers'
calibration mode) on the first `data.limit` prompts of the data set's calibration split (-1: all of them, null:
8), which is never evaluated, one call per prompt with the run's seed, combines what it measured over the prompts
(the config's `combine_calibrations`: a mean, or TeaCache's fit over every prompt's points), and writes
assets/<method>/<model>-<steps>.json with the guidance scale it was made at, which the method's conf file
reads (`${calibrated:<field>}`) for that model, step count and guidance scale. Takes the same overrides as
run.py (model, data, device, dtype, seed). A method whose calibration depends on its own settings
(`calibrates_with_settings`: forecast_search's segment costs) is also given its configured config, `config=`.
Each prompt's measurement is kept in outputs/calibration_measurements/ as soon as it is made, so the same command
run again after an interruption resumes at the first unfinished prompt (`overwrite=true` measures anew). Hydra's
log of the command goes to outputs/logs/calibrate/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.lifecycle import resolvers  # noqa: F401


def few_prompts_warning(method, used: int, available: int) -> str | None:
    """What to say when a method whose calibration selects among many candidates (`calibration_selects`) is
    calibrated on part of the calibration split: the selection fits the prompts it saw."""
    if not getattr(method, "calibration_selects", False) or used >= available:
        return None
    return (f"warning: {method.__name__} is calibrated on {used} of the calibration split's {available} prompts; "
            f"what it selects fits the prompts it measured (a schedule searched on 8 prompts was 2-3 dB below evenly "
            f"spaced full steps on unseen ones, docs/results.md): use them all, data.limit={available}")


def measure_each(prompts, measure, folder: Path, overwrite: bool = False) -> list:
    """`measure(prompt)` for every prompt, each kept in `folder/<index>.json` as soon as it is made, so an
    interrupted calibration resumes at the first prompt it had not finished (a long one on a large model, or on
    the 1024-token scene model, loses at most one prompt). A kept measurement is read back only for the same
    prompt text; `overwrite` measures every prompt anew."""
    from experiments.base.files import read_json, write_json

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in prompts:
        path = folder / f"{p.index}.json"
        kept = None if overwrite else read_json(path)
        if kept is None or kept.get("prompt") != p.text:
            write_json(path, {"prompt": p.text, "measured": measure(p)})
            kept = read_json(path)  # as stored: a resumed calibration combines exactly what a whole one does
        out.append(kept["measured"])
    return out


def rounded(value):
    """Numbers to 6 decimals, in lists too; anything else (a method's nested record, whose costs may be far
    below 1e-6) as it is."""
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return round(value, 6) if isinstance(value, (int, float)) else value


def calibrated_methods() -> list[str]:
    """The methods that have a calibration (their config overrides `calibrate`)."""
    import cat
    from cat.methods.base import MethodConfig

    return sorted(name for name, config in cat.METHODS.items()
                  if config.calibrate.__func__ is not MethodConfig.calibrate.__func__)


def prompt_limit(limit) -> int | None:
    """How many calibration prompts `data.limit` asks for, as run.py reads it: a positive count, or -1 for the
    whole calibration split (None); null: 8."""
    if limit is None:
        return 8
    if limit == -1:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise SystemExit(f"data.limit={limit!r} is invalid for a calibration; allowed: a positive count, -1 (the "
                         "whole calibration split) or null (8 prompts)")
    return limit


def check(cfg: DictConfig, method) -> None:
    """What the calibration needs, before any model loads: a method that has one, a step count, and a count of
    prompts."""
    from cat.methods.base import MethodConfig

    if method.calibrate.__func__ is MethodConfig.calibrate.__func__:
        raise SystemExit(f"method={cfg.method.name} has no calibration; methods with one: "
                         f"{', '.join(calibrated_methods())}")
    steps = cfg.model.steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SystemExit(f"model.steps={steps!r} is invalid; allowed: an integer >= 1")
    prompt_limit(cfg.data.limit)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from experiments.base.config_files import Unavailable

    try:
        calibrate(cfg)
    except Unavailable as err:  # prompts or weights not here and not fetchable now: how to get them, in one line
        raise SystemExit(f"error: {err}") from None


def calibrate(cfg: DictConfig) -> None:
    from experiments.base.config_files import calibration_file
    from experiments.base.devices import pick_device, pick_dtype
    from experiments.base.files import write_json
    from experiments.prompts.sets import prompts_of
    from experiments.run import keys
    from experiments.run.generate import call_kwargs, generators
    from experiments.run.pipelines import load_pipeline

    if cfg.method.get("config") is None:
        raise SystemExit("calibrate.py needs a method: python scripts/calibrate.py method=<name> ...; methods "
                         f"with a calibration: {', '.join(calibrated_methods())}")
    method = get_class(cfg.method.config._target_)  # the class: the fields to calibrate may still be missing
    check(cfg, method)
    # the data set's calibration split: a method is never calibrated on prompts it is evaluated on
    prompts = prompts_of({**cfg.data, "split": "calibration", "limit": prompt_limit(cfg.data.limit)})
    if (said := few_prompts_warning(method, len(prompts),
                                    len(prompts_of({**cfg.data, "split": "calibration", "limit": None})))):
        print(said, file=sys.stderr)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    steps = kwargs.pop("num_inference_steps")
    if method.calibrates_with_settings:  # its own calibration never read while it is measured anew
        kwargs["config"] = instantiate(cfg.method.config, calibration=None)
    # each prompt's measurement kept as it is made, keyed by everything it depends on (a local model and the code
    # by content; the method's settings where its calibration holds for them): a rerun of the command resumes
    material = {"model": keys.model_material(OmegaConf.to_container(cfg.model, resolve=True)),
                "method": cfg.method.name, "call": repr(sorted(kwargs.items())), "steps": steps, "dtype": str(dtype),
                "device": str(device), "seed": cfg.seed, "code": keys.code_identity()}
    measurements = (Path(cfg.output_root) / "calibration_measurements"
                    / f"{cfg.method.name}-{cfg.model.name}-{keys.digest(material)[:16]}")
    measured = measure_each(prompts, lambda p: method.calibrate(pipe, [p.text], steps, generator=generators(cfg, [p])[0],
                                                                **kwargs), measurements, bool(cfg.overwrite))
    fields = {name: rounded(value) for name, value in method.combine_calibrations(measured).items()}
    out = calibration_file(cfg.method.name, cfg.model.name, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"model": cfg.model.name, "steps": steps, "prompts": len(prompts), "split": "calibration",
                     "seed": cfg.seed, "guidance_scale": cfg.model.guidance_scale, **fields})
    print(f"wrote {out}: {', '.join(fields)} from {len(prompts)} prompts")


def with_log_folder(argv: list[str], script: str) -> list[str]:
    """`argv` with Hydra's run folder set to `<output_root>/logs/<script>` unless it sets one: by default it is
    run.py's run folder of the same overrides, and a stub of it (a log, no results) would be left in runs/."""
    if any(arg.lstrip("+").startswith("hydra.run.dir=") for arg in argv[1:]):
        return argv
    return [*argv, f"hydra.run.dir=${{output_root}}/logs/{script}"]


if __name__ == "__main__":
    sys.argv = with_log_folder(sys.argv, "calibrate")
    main()
