"""Calibrate what a method measures once per model and step count (e.g. MagCache's magnitude ratios).

    python scripts/calibrate.py method=magcache                                   # the embedded default, 28 steps
    python scripts/calibrate.py method=magcache model=sd3_medium model.steps=28   # a real checkpoint (GPU)

Runs the method's calibration (its config's `calibrate`: for MagCache the full model in diffusers'
calibration mode) on the first `data.limit` prompts of the data set's calibration split, which is never
evaluated, one call per prompt with the run's seed, averages what it measured over the prompts (a method
whose config declares `calibrates_jointly` is called once with every prompt and its configured settings,
`config=`, and its fields are written as it returns them: a search over the prompts), and writes
assets/<method>/<model>-<steps>.json, which the method's conf file reads (`${calibrated:<field>}`). Takes
the same overrides as run.py (model, data, device, dtype, seed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import resolvers  # noqa: E402,F401


def mean(values: list):
    """The mean of numbers, or of equally long sequences of numbers element by element (cut to the shortest)."""
    if isinstance(values[0], (list, tuple)):
        return [sum(v[i] for v in values) / len(values) for i in range(min(map(len, values)))]
    return sum(values) / len(values)


def rounded(value):
    return [round(v, 6) for v in value] if isinstance(value, list) else round(value, 6)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from experiments.data import prompts_of
    from experiments.generate import call_kwargs, generators
    from experiments.pipelines import load_pipeline, pick_device, pick_dtype
    from experiments.resolvers import calibration_file
    from experiments.sinks import write_json

    if cfg.method.get("config") is None:
        raise SystemExit("calibrate.py needs a method: python scripts/calibrate.py method=<name> ...")
    method = get_class(cfg.method.config._target_)  # the class: the fields to calibrate may still be missing
    # the data set's calibration split: a method is never calibrated on prompts it is evaluated on
    prompts = prompts_of({**cfg.data, "split": "calibration", "limit": max(1, int(cfg.data.limit or 8))})
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    steps = kwargs.pop("num_inference_steps")
    if getattr(method, "calibrates_jointly", False):
        # a search over all prompts at once, with the configured settings: its fields are written as returned
        fields = method.calibrate(pipe, [p.text for p in prompts], steps, config=instantiate(cfg.method.config),
                                  generator=generators(cfg, prompts), **kwargs)
    else:
        measured = [method.calibrate(pipe, [p.text], steps, generator=generators(cfg, [p])[0], **kwargs)
                    for p in prompts]
        fields = {name: rounded(mean([m[name] for m in measured])) for name in measured[0]}
    out = calibration_file(cfg.method.name, cfg.model.name, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"model": cfg.model.name, "steps": steps, "prompts": len(prompts), "split": "calibration",
                     "seed": cfg.seed, "guidance_scale": cfg.model.guidance_scale, **fields})
    print(f"wrote {out}: {', '.join(fields)} from {len(prompts)} prompts")


if __name__ == "__main__":
    main()
