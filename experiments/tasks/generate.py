"""`task=generate`: the full model's and the method's images on the same prompts and seeds (their executed
MACs counted as they are generated), then their metrics, timing, figures and logging."""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf

from ..base.config_files import ConfigError
from ..base.devices import pick_device, pick_dtype
from ..base.files import read_json, write_lines
from ..metrics.registry import enabled
from ..reports.figures import run_figures
from ..reports.loggers import log_run
from ..run import latency, macs
from ..run.evaluate import image_metrics, records
from ..run.generate import (FIRST_BATCH, batches, call_kwargs, call_pipeline, full_image_cache, generate_images,
                            generators, run_prompts)
from ..run.pipelines import load_pipeline
from . import validation
from .registry import Task, register

log = logging.getLogger(__name__)


def check(cfg: DictConfig, method) -> None:
    """The method on this model and device, the run's settings, and the prompts its metrics score."""
    validation.check_method(cfg, method, device=True)
    prompts = validation.check_run(cfg, counts_macs=bool(cfg.metrics.get("macs")))
    if prompts is not None:
        check_prompts(cfg, prompts)


def check_prompts(cfg: DictConfig, prompts) -> None:
    """The prompt list holds prompts, and every enabled metric can score them (the adherence judge's grammar)."""
    validation.check_prompts(cfg, prompts)
    for metric in enabled(cfg.metrics, cfg.data.name):
        try:
            metric.check_prompts(prompts, cfg.data.name)
        except ValueError as err:
            raise ConfigError(str(err)) from err


def generate_and_evaluate(cfg: DictConfig, run_dir: Path, method) -> dict | None:
    """Images of the full model and of the method on the same prompts and seeds (their executed MACs counted
    as they are generated), then their metrics, timing, figures and logging. Under several processes only the
    main one evaluates (None elsewhere)."""
    prompts = run_prompts(cfg)
    check_prompts(cfg, prompts)
    state = PartialState()
    device = pick_device(cfg.device) if state.num_processes == 1 else state.device
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    folders = generate_images(cfg, pipe, method, run_dir, prompts, kwargs, state, dtype, device)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None  # the main process evaluates and writes the merged results

    variant = cfg.method.name
    rows = records(cfg, run_dir, prompts, folders, method)
    metrics = {"num_images": len(prompts), "dtype": str(dtype).removeprefix("torch.")}
    metrics.update(read_json(run_dir / FIRST_BATCH) or {})
    metrics.update(image_metrics(cfg, prompts, folders, variant, method, rows))
    if cfg.metrics.macs:  # counted while the evaluated images were generated
        sources = {"full": full_image_cache(cfg, kwargs, dtype, device)}  # the shared cache's lines
        if method is not None:
            sources[variant] = folders[variant]
        metrics.update(macs.executed(batches(prompts, cfg.batch_size), sources, folders, cfg.model.steps, rows))
    if cfg.metrics.latency.enabled:
        metrics.update(timing(cfg, pipe, method, device, prompts, kwargs))
    write_lines(run_dir / "records.jsonl", rows)
    run_figures(cfg, run_dir, prompts, folders, variant)
    log_run(cfg, run_dir, metrics)
    return metrics


def timing(cfg: DictConfig, pipe, method, device, prompts, kwargs: dict) -> dict:
    """The full model and the method timed on the run's first `metrics.latency.num_prompts` prompts."""
    sample = prompts[: cfg.metrics.latency.num_prompts]
    call = lambda **o: call_pipeline(pipe, [p.text for p in sample], generators(cfg, sample), {**kwargs, **o})  # noqa: E731
    return latency.compare(pipe, call, method, device, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats,
                           cfg.metrics.latency.compile, cfg.compile_mode, kwargs["num_inference_steps"])


def retime(cfg: DictConfig, run_dir: Path, method, metrics: dict) -> dict:
    """A finished run's metrics with its timing measured again; its images and other metrics are kept."""
    if not cfg.metrics.latency.enabled:
        return metrics
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    return {**latency.without_timing(metrics), **timing(cfg, pipe, method, device, run_prompts(cfg), call_kwargs(cfg))}


register(Task("generate", "generate images with the full model and the method, and score them",
              generate_and_evaluate, check, retime))
