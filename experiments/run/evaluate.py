"""Evaluation of a run's images: every metric the run's config enables (`experiments.metrics`, asked of the
registry), each a mean over prompts with its 95% bootstrap interval, and the per-image records."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import metrics
from ..base.intervals import mean_ci
from ..metrics.images import load_folder
from ..metrics.registry import Scoring, mean_of
from .generate import image_path, prompt_seed

log = logging.getLogger(__name__)


def records(cfg, run_dir: Path, prompts, folders: dict, method) -> list[dict]:
    """One record per image: index, prompt, seed, variant, path (and the prompt's metadata)."""
    return [{"index": p.index, "prompt": p.text, "seed": prompt_seed(cfg.seed, p.index), "variant": name,
             "path": str(image_path(folder, p.index).relative_to(run_dir)), **p.meta}
            for name, folder in folders.items() if name == "full" or method is not None for p in prompts]


def image_metrics(cfg, prompts, folders, variant, method, records) -> dict:
    """The enabled metrics of the full model's and the method's images (`<name>_full` and `<name>`; a metric
    measured against the full model, the method's only), means over prompts with 95% bootstrap intervals;
    each record (one per image) gets its own values."""
    out: dict = {}
    names = ["full"] + ([variant] if method is not None else [])
    by_index = {name: dict(zip(*load_folder(folders[name]))) for name in names}
    images = {name: [by_index[name][p.index] for p in prompts] for name in names}
    per_image: dict[tuple[str, int], dict] = {}
    shared, notes = {}, {}
    scorings = {name: Scoring(images[name], prompts, images["full"] if name != "full" else None, cfg.data.name,
                              cfg.metrics, shared, notes) for name in names}
    chosen = metrics.registry.enabled(cfg.metrics, cfg.data.name)
    against_full = [m for m in chosen if m.against_full] if method is not None else []
    if against_full:
        log.info("metrics: %s against the full model on %d image(s) ...", ", ".join(m.short for m in against_full),
                 len(prompts))
    for metric in chosen:
        scored = [variant] if metric.against_full else names
        if metric.against_full and method is None:
            continue
        if not metric.against_full:
            log.info("metrics: %s on %d image(s) ...", metric.label, len(prompts) * len(scored))
        for name in scored:
            values = metric.compute(scorings[name])
            key = f"{metric.name}_full" if name == "full" else metric.name
            if not metric.per_image:
                out[key] = float(values)
                continue
            for p, v in zip(prompts, values):
                per_image.setdefault((name, p.index), {})[metric.name] = float(v)
            out[key] = mean_of(values)
    out.update(notes)
    # 95% bootstrap intervals over prompts of every per-image metric
    for name in names:
        suffix = "_full" if name == "full" else ""
        keys = {k for p in prompts for k in per_image.get((name, p.index), {})}
        for key in sorted(keys):
            values = [per_image.get((name, p.index), {}).get(key) for p in prompts]
            if None in values:
                continue
            mean, lo, hi = mean_ci(values)
            out[f"{key}{suffix}_lo"], out[f"{key}{suffix}_hi"] = lo, hi
    for rec in records:
        rec.update(per_image.get((rec["variant"], rec["index"]), {}))
    return out
