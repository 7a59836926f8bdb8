"""`task=latency`: the full model and the method timed in the same run, no images saved and no quality
metric computed."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from ..base.config_files import ConfigError
from ..base.devices import pick_device, pick_dtype
from ..run.generate import call_kwargs, call_pipeline, generators, run_prompts
from ..run.latency import compare
from ..run.pipelines import load_pipeline
from . import validation
from .registry import Task, register

log = logging.getLogger(__name__)


def check(cfg: DictConfig, method) -> None:
    validation.check_method(cfg, method)
    validation.check_run(cfg)


def measure(cfg, run_dir, method) -> dict:
    """The full model and the method timed in the same run (eager, or compiled with
    `compile=true`): warm-ups, `metrics.latency.repeats` timed runs with device synchronisation, median
    and spread, peak memory; no images are saved and no quality metric is computed."""
    prompts = run_prompts(cfg)[: cfg.metrics.latency.num_prompts]
    if not prompts:
        raise ConfigError("the prompt set is empty: check data.path, data.limit, data.categories and data.shard")
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    log.info("timing %d prompt(s) on %s (%s): %d warm-up and %d timed runs per variant, compile=%s",
             len(prompts), device, dtype, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats, cfg.compile)
    call = lambda **o: call_pipeline(pipe, [p.text for p in prompts], generators(cfg, prompts), {**kwargs, **o})  # noqa: E731
    out = compare(pipe, call, method, device, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats, cfg.compile,
                  cfg.compile_mode, kwargs["num_inference_steps"])
    out.update(latency_prompts=len(prompts), latency_warmup=cfg.metrics.latency.warmup)
    return out


register(Task("latency", "time the full model against the method in the same run (no images, no metrics)",
              measure, check, lambda cfg, run_dir, method, metrics: measure(cfg, run_dir, method)))
