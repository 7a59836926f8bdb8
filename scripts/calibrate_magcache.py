"""Calibrate MagCache's magnitude ratios for one model and step count (needed once per pair).

    python scripts/calibrate_magcache.py                                  # the embedded default, 28 steps
    python scripts/calibrate_magcache.py model=sd3_medium model.steps=28  # a real checkpoint (GPU)

Runs the full model on the first `data.limit` prompts of the data set's calibration split, which is
never evaluated (diffusers' calibration mode: nothing is skipped) and writes assets/magcache/<model>-<steps>.json, which conf/method/magcache.yaml reads.
Takes the same overrides as run.py (model, data, device, dtype, seed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import resolvers  # noqa: E402,F401
from experiments.config_files import ROOT  # noqa: E402


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from cat import calibrate_magcache
    from experiments.generate import prompt_seed
    from experiments.pipelines import load_pipeline, pick_device, pick_dtype
    from experiments.sinks import write_json
    from experiments.data import prompts_of
    from experiments.tasks import call_kwargs

    # the calibration split: MagCache is never calibrated on prompts it is evaluated on
    prompts = prompts_of({**cfg.data, "split": "calibration", "limit": max(1, int(cfg.data.limit or 8))})
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    steps = kwargs.pop("num_inference_steps")
    ratios = [calibrate_magcache(pipe, [p.text], steps, generator=torch.Generator().manual_seed(prompt_seed(cfg.seed, p.index)),
                                 **kwargs) for p in prompts]
    mean = [sum(r[i] for r in ratios) / len(ratios) for i in range(min(map(len, ratios)))]
    out = ROOT / "assets" / "magcache" / f"{cfg.model.name}-{steps}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"model": cfg.model.name, "steps": steps, "prompts": len(prompts), "split": "calibration",
                     "seed": cfg.seed, "guidance_scale": cfg.model.guidance_scale,
                     "mag_ratios": [round(r, 6) for r in mean]})
    print(f"wrote {out}: {len(mean)} ratios from {len(prompts)} prompts")


if __name__ == "__main__":
    main()
