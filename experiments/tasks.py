"""The tasks `run.py` dispatches to: `generate` (generate and evaluate) and `macs` (count MACs offline).

A task takes the composed config and the run directory and returns a flat dict of metrics. Everything
that can be checked without a model (method values, step counts, data, model files) is checked before
any model is loaded.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cat

from . import data as datasets
from .config_files import transformer_config
from .sinks import make_sink, write_json, write_lines

log = logging.getLogger(__name__)


def method_config(cfg: DictConfig) -> cat.CATConfig | None:
    """The method's CATConfig (None for the full model), validated against the model's step count."""
    if cfg.method.get("config") is None:
        return None
    try:
        config = instantiate(cfg.method.config)
    except Exception as err:  # Hydra wraps the dataclass's ValueError: surface the field and range
        cause = err.__cause__ or err
        raise ValueError(f"method={cfg.method.name}: {cause}") from err
    steps = cfg.model.steps
    if config.warmup_steps >= steps:
        raise ValueError(
            f"method.config.warmup_steps={config.warmup_steps} must be smaller than model.steps={steps}: "
            "with no pruned step CAT would change nothing (lower the warm-up or raise the steps)"
        )
    return config


def call_kwargs(cfg: DictConfig) -> dict:
    model = cfg.model
    kwargs = {"num_inference_steps": model.steps, "guidance_scale": model.guidance_scale,
              "height": model.height, "width": model.width, **OmegaConf.to_container(model.call_kwargs or {})}
    return kwargs


def prompts_for(cfg: DictConfig, process: int = 0, num_processes: int = 1) -> list[datasets.Prompt]:
    d = cfg.data
    return datasets.load_prompts(d.name, d.get("path"), d.get("limit"), d.get("categories"),
                                 d.get("shard", 0), d.get("num_shards", 1), d.get("source", "hub"))


def run_task(cfg: DictConfig, run_dir: Path) -> dict:
    """Runs cfg.task in run_dir, recording status.json; reruns of a finished run return its metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    status_file, metrics_file = run_dir / "status.json", run_dir / "metrics.json"
    if not cfg.overwrite and status_file.exists() and metrics_file.exists():
        import json

        if json.loads(status_file.read_text()).get("status") == "done":
            log.info("%s is already done; skipping (overwrite=true to redo)", run_dir)
            return json.loads(metrics_file.read_text())
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        if cfg.task == "generate":
            metrics = generate_and_evaluate(cfg, run_dir)
        elif cfg.task == "macs":
            metrics = count_macs(cfg)
        else:
            raise ValueError(f"task={cfg.task!r} is invalid; allowed: generate, macs")
    except Exception as err:
        write_json(status_file, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc()})
        raise
    if metrics is None:
        return {}
    write_json(metrics_file, metrics)
    write_json(status_file, {"status": "done"})
    return metrics


def count_macs(cfg: DictConfig) -> dict:
    model_cfg = transformer_config(OmegaConf.to_container(cfg.model, resolve=True))
    from .macs import report_for_model

    return report_for_model(model_cfg, method_config(cfg)).as_metrics()


def generate_and_evaluate(cfg: DictConfig, run_dir: Path) -> dict | None:
    from accelerate import PartialState

    from .generate import generate, image_path
    from .pipelines import load_pipeline, pick_device, pick_dtype

    method = method_config(cfg)  # fails here, before any model load, on bad method values
    prompts = prompts_for(cfg)
    if not prompts:
        raise ValueError("the prompt set is empty: check data.limit, data.categories and data.shard")
    state = PartialState()
    device = pick_device(cfg.device) if state.num_processes == 1 else state.device
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    variant = cfg.method.name
    folders = {"full": run_dir / "images" / "full", variant: run_dir / "images" / variant}

    shared_full = full_image_cache(cfg, kwargs, dtype)
    with state.split_between_processes(prompts) as mine:
        # The full model's images depend only on model, prompt, seed and call: shared by every run and sweep cell.
        generate(pipe, list(mine), shared_full, cfg.seed, cfg.batch_size, kwargs, cfg.overwrite, desc="full model")
        link_images(shared_full, folders["full"], [p.index for p in mine])
        if method is not None:
            with cat.apply(pipe, method) as handle:
                first = {}

                def keep_stats(batch, images):
                    if not first and batch and batch[0].index == prompts[0].index:
                        first["stats"] = handle.stats

                generate(pipe, list(mine), folders[variant], cfg.seed, cfg.batch_size, kwargs, cfg.overwrite,
                         on_batch=keep_stats, desc=variant)
                if state.is_main_process and not (run_dir / "selection.npz").exists():
                    _save_selection(pipe, handle, prompts[0], cfg, kwargs, run_dir, first.get("stats"))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None  # the main process evaluates and writes the merged results

    records = [{"index": p.index, "prompt": p.text, "seed": _seed(cfg, p), "variant": name,
                "path": str(image_path(folder, p.index).relative_to(run_dir)), **p.meta}
               for name, folder in folders.items() if name == "full" or method is not None for p in prompts]
    metrics = {"num_images": len(prompts)}
    metrics.update(_image_metrics(cfg, run_dir, prompts, folders, variant, method, records))
    if cfg.metrics.macs:
        metrics.update(count_macs_for_pipe(pipe, cfg, method))
    if cfg.metrics.latency.enabled:
        from .latency import compare

        sample = prompts[: cfg.metrics.latency.num_prompts]
        gen = lambda: [torch.Generator().manual_seed(_seed(cfg, p)) for p in sample]  # noqa: E731
        metrics.update(compare(pipe, lambda: pipe([p.text for p in sample], generator=gen(), **kwargs), method,
                               device, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats,
                               cfg.metrics.latency.compile))
    write_lines(run_dir / "records.jsonl", records)
    _figures(run_dir, prompts, folders, variant)
    _log(cfg, run_dir, metrics)
    return metrics


def full_image_cache(cfg: DictConfig, kwargs: dict, dtype) -> Path:
    import hashlib
    import json

    key = json.dumps({"model": OmegaConf.to_container(cfg.model, resolve=True), "data": cfg.data.name,
                      "path": cfg.data.get("path"), "seed": cfg.seed, "call": kwargs, "dtype": str(dtype)},
                     sort_keys=True, default=str)
    return Path(cfg.output_root) / "full_images" / f"{cfg.model.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def link_images(source: Path, folder: Path, indices: list[int]) -> None:
    """Links (or copies, where links are not possible) cached images into a run's folder."""
    import os
    import shutil

    from .generate import image_path

    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        src, dst = image_path(source, i), image_path(folder, i)
        if dst.exists() or dst.is_symlink():
            continue
        try:
            os.symlink(os.path.relpath(src.resolve(), folder.resolve()), dst)
        except OSError:
            shutil.copyfile(src, dst)


def _seed(cfg, prompt) -> int:
    from .generate import prompt_seed

    return prompt_seed(cfg.seed, prompt.index)


def _save_selection(pipe, handle, prompt, cfg, kwargs, run_dir: Path, stats) -> None:
    from .figures import save_selection

    if stats is None:  # the first prompt's images were cached: regenerate it once for its statistics
        pipe([prompt.text], generator=[torch.Generator().manual_seed(_seed(cfg, prompt))], **kwargs)
        stats = handle.stats
    if stats.labels is not None or any(s.active is not None for s in stats.steps):
        save_selection(stats, run_dir / "selection.npz")


def count_macs_for_pipe(pipe, cfg: DictConfig, method) -> dict:
    from .macs import report_from_config

    config = {k: v for k, v in dict(pipe.transformer.config).items() if not k.startswith("_")}
    macs_cfg = OmegaConf.to_container(cfg.model.get("macs") or {}, resolve=True)
    rep = report_from_config(type(pipe.transformer).__name__, config, height=cfg.model.height, width=cfg.model.width,
                 text_tokens=macs_cfg.get("text_tokens", 77), steps=cfg.model.steps,
                 guidance=cfg.model.guidance_scale > 1 and cfg.model.cfg_batch, method=method,
                 vae_scale=macs_cfg.get("vae_scale", 8))
    return rep.as_metrics()


def _image_metrics(cfg, run_dir, prompts, folders, variant, method, records) -> dict:
    from .metrics.images import load_folder

    m = cfg.metrics
    out: dict = {}
    names = ["full"] + ([variant] if method is not None else [])
    images = {name: load_folder(folders[name])[1] for name in names}
    by_index = {name: dict(zip(load_folder(folders[name])[0], images[name])) for name in names}
    images = {name: [by_index[name][p.index] for p in prompts] for name in names}
    per_image: dict[tuple[str, int], dict] = {}

    def put(name, key, values):
        for p, v in zip(prompts, values):
            per_image.setdefault((name, p.index), {})[key] = float(v)

    if m.adherence and cfg.data.name == "shapes":
        from .shapes import judge

        for name in names:
            scores = [judge(img, p.text)["score"] for img, p in zip(images[name], prompts)]
            put(name, "adherence", scores)
            out["adherence" if name == variant else "adherence_full"] = sum(scores) / len(scores)
    if m.clip.enabled:
        from .metrics.clip_score import ClipScorer

        scorer = ClipScorer(m.clip.backend, m.clip.model, m.clip.pretrained, batch_size=m.clip.batch_size)
        for name in names:
            scores = scorer.score(images[name], [p.text for p in prompts])
            put(name, "clip_score", scores.tolist())
            out["clip_score" if name == variant else "clip_score_full"] = scores.mean().item()
    if method is not None and m.fidelity:
        from .metrics.fidelity import fidelity

        fid_ = fidelity(images[variant], images["full"], lpips=m.lpips)
        for key, values in fid_.pop("per_image").items():
            put(variant, key, values)
        out.update(fid_)
    if m.fid.enabled:
        from .metrics.fid import fid

        cache = Path(m.fid.cache_dir).expanduser()
        if m.fid.reference:
            for name in names:
                res = fid(images[name], m.fid.reference, cache_dir=cache, weights_path=m.fid.weights)
                out["fid" if name == variant else "fid_full"] = res["fid"]
                out["fid_num_reference"] = res["num_reference"]
        if method is not None and m.fid.vs_full:
            out["fid_vs_full"] = fid(images[variant], images["full"], weights_path=m.fid.weights)["fid"]
    for rec in records:
        rec.update(per_image.get((rec["variant"], rec["index"]), {}))
    return out


def _figures(run_dir: Path, prompts, folders, variant) -> None:
    from .figures import image_grid, selection_figure
    from .generate import image_path

    shown = prompts[:8]
    rows = {name: [image_path(folder, p.index) for p in shown] for name, folder in folders.items()
            if image_path(folder, shown[0].index).exists()}
    image_grid(rows, [p.text for p in shown], run_dir / "grid.png")
    if (run_dir / "selection.npz").exists():
        selection_figure(run_dir / "selection.npz", run_dir / "selection.png")


def _log(cfg, run_dir: Path, metrics: dict) -> None:
    sink = make_sink(OmegaConf.to_container(cfg.logger, resolve=True), run_dir.name or cfg.name,
                     cfg.get("group"), OmegaConf.to_container(cfg, resolve=True), run_dir)
    if sink is None:
        return
    sink.log(metrics, {"grid": run_dir / "grid.png", "selection": run_dir / "selection.png"})
    sink.finish()


def print_table(metrics: dict) -> str:
    lines = [f"{'metric':<32}{'value':>16}", "-" * 48]
    for k in sorted(metrics):
        v = metrics[k]
        lines.append(f"{k:<32}{v:>16.6g}" if isinstance(v, (int, float)) else f"{k:<32}{str(v):>16}")
    return "\n".join(lines)
