"""The tasks `run.py` dispatches to (`TASKS`), each `(cfg, run_dir, method config) -> flat metrics`:
`generate` (the full model's and the method's images, then evaluation), `macs` (MACs counted offline,
experiments/macs.py), `latency` (timing only, experiments/latency.py) and `compare` (one method in one
variant of the fair comparison, experiments/compare.py). The run lifecycle around them
(validation, the run key, locks, reuse) is experiments/runs.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import latency, macs
from .checks import check_prompts
from .sinks import read_json, write_lines

log = logging.getLogger(__name__)


def generate_and_evaluate(cfg: DictConfig, run_dir: Path, method) -> dict | None:
    """`task=generate`: images of the full model and of the method on the same prompts and seeds (their
    executed MACs counted as they are generated), then their metrics, timing, figures and logging. Under
    several processes only the main one evaluates (None elsewhere)."""
    from accelerate import PartialState

    from .evaluate import image_metrics, records
    from .figures import run_figures
    from .generate import (FIRST_BATCH, batches, call_kwargs, full_image_cache, generate_images, generators,
                           run_prompts)
    from .pipelines import load_pipeline, pick_device, pick_dtype
    from .sinks import log_run

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
    metrics.update(image_metrics(cfg, run_dir, prompts, folders, variant, method, rows))
    if cfg.metrics.macs:  # counted while the evaluated images were generated
        sources = {"full": full_image_cache(cfg, kwargs, dtype, device)}  # the shared cache's lines
        if method is not None:
            sources[variant] = folders[variant]
        metrics.update(macs.executed(batches(prompts, cfg.batch_size), sources, folders, cfg.model.steps, rows))
    if cfg.metrics.latency.enabled:
        sample = prompts[: cfg.metrics.latency.num_prompts]
        call = lambda **o: pipe([p.text for p in sample], generator=generators(cfg, sample), **{**kwargs, **o})  # noqa: E731
        metrics.update(latency.compare(pipe, call, method, device, cfg.metrics.latency.warmup,
                                       cfg.metrics.latency.repeats, cfg.metrics.latency.compile, cfg.compile_mode))
    write_lines(run_dir / "records.jsonl", rows)
    run_figures(cfg, run_dir, prompts, folders, variant)
    log_run(cfg, run_dir, metrics)
    return metrics


def compare(cfg: DictConfig, run_dir: Path, method) -> dict:
    """`task=compare`: one method in one variant of the fair comparison (experiments/compare.py)."""
    from .compare import compare_task

    return compare_task(cfg, run_dir, method)


TASKS = {"generate": generate_and_evaluate, "macs": macs.count, "latency": latency.measure, "compare": compare}
