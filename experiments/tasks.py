"""The tasks `run.py` dispatches to: `generate` (generate and evaluate) and `macs` (count MACs offline).

A task takes the composed config and the run directory and returns a flat dict of metrics. Everything
that can be checked without a model (method values, step counts, data, model files) is checked before
any model is loaded.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import cat

from . import data as datasets
from . import checks, identity
from .checks import JUDGED, validate
from .config_files import transformer_config
from .sinks import clean_temporaries, make_sink, read_json, write_json, write_lines, write_text

log = logging.getLogger(__name__)


def method_config(cfg: DictConfig):
    """The method's config (None for the full model), validated against the model's steps and tokens."""
    validate(cfg)
    return checks.method_config(cfg)


def call_kwargs(cfg: DictConfig) -> dict:
    model = cfg.model
    kwargs = {"num_inference_steps": model.steps, "guidance_scale": model.guidance_scale,
              "height": model.height, "width": model.width, **OmegaConf.to_container(model.call_kwargs or {})}
    return kwargs


def prompts_for(cfg: DictConfig, process: int = 0, num_processes: int = 1) -> list[datasets.Prompt]:
    return datasets.prompts_of(cfg.data)


def run_task(cfg: DictConfig, run_dir: Path) -> dict:
    """Runs cfg.task in run_dir, recording status.json; reruns of a finished run return its metrics.

    The run directory is locked for the whole run, so a second process on the same directory waits
    and then finds the results instead of redoing or corrupting them.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    status_file, metrics_file = run_dir / "status.json", run_dir / "metrics.json"
    try:
        validate(cfg)
    except checks.ConfigError as err:
        write_json(status_file, {"status": "failed", "error": f"ConfigError: {err}"})
        raise
    plain = OmegaConf.to_container(cfg, resolve=True)
    material = identity.key_material(plain)
    key, config_key = identity.digest(material), identity.config_digest(material)
    code, reuse = material["code"]["sha256"], bool(cfg.get("reuse_other_code"))
    with _lock(run_dir / ".lock"):
        # recursively unless this is a distributed launch, whose other ranks write without the lock
        clean_temporaries(run_dir, recursive=int(os.environ.get("WORLD_SIZE", "1")) == 1)
        if not cfg.overwrite and (found := finished_here(run_dir, key, config_key, code, reuse)) is not None:
            return found
        status_file.unlink(missing_ok=True)
        metrics_file.unlink(missing_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(identity.scrub(plain))))
        record = identity.provenance(str(cfg.device))
        write_json(run_dir / "run_key.json", {"key": key, "config_key": config_key, "material": material,
                                              "provenance": record})
        log.info("run %s: task=%s model=%s method=%s key=%s", run_dir, cfg.task, cfg.model.name, cfg.method.name, key)
        log.info("code %s (commit %s%s); torch %s, diffusers %s, transformers %s", code[:12], record["git_sha"],
                 ", dirty tree" if record["git_dirty"] else "", record["torch"], record["diffusers"],
                 record["transformers"])
        if not cfg.overwrite and (found := reuse_sibling(run_dir, key, config_key, code, reuse)) is not None:
            return found
        try:
            if cfg.task == "generate":
                metrics = generate_and_evaluate(cfg, run_dir)
            elif cfg.task == "macs":
                metrics = count_macs(cfg)
            elif cfg.task == "latency":
                metrics = measure_latency(cfg)
            else:
                raise ValueError(f"task={cfg.task!r} is not implemented here")
        except Exception as err:
            write_json(status_file, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc()})
            raise
        if metrics is None:
            return {}
        write_json(metrics_file, metrics)
        write_json(status_file, {"status": "done"})
        log.info("done: %s", ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in sorted(metrics.items())))
    return metrics


SIBLING_SKIP = {".hydra", ".lock", "config.yaml", "run_key.json", "status.json", "metrics.json", "run.log"}


def _finished(folder: Path):
    """(run_key.json, status.json, metrics) of a finished run folder, or None."""
    recorded, status = read_json(folder / "run_key.json") or {}, read_json(folder / "status.json") or {}
    metrics = read_json(folder / "metrics.json")
    if status.get("status") != "done" or not isinstance(metrics, dict):
        return None
    return recorded, status, metrics


def _code_of(recorded: dict) -> str:
    return ((recorded.get("material") or {}).get("code") or {}).get("sha256") or "unknown"


def _same_config_other_code(recorded: dict, key: str, config_key: str) -> bool:
    # a run recorded before the code joined the key: its key is its configuration's key
    return recorded.get("key") != key and (recorded.get("config_key") or recorded.get("key")) == config_key


def _stale_mark(recorded: dict) -> dict:
    """`reused_code_from`: the code that made a run's results, when that is not the code it is keyed by."""
    if recorded.get("reused_code_from"):
        return {"reused_code_from": recorded["reused_code_from"]}
    return {}


def finished_here(run_dir: Path, key: str, config_key: str, code: str, reuse_other_code: bool) -> dict | None:
    """The metrics of the finished run in run_dir when it may be returned instead of computing: its key
    is this run's key, or it is this configuration made by other code and `reuse_other_code` is set (it
    is then marked `reused_code_from` in run_key.json and status.json, which every table shows)."""
    found = _finished(run_dir)
    if found is None:
        if (run_dir / "status.json").exists():
            log.info("%s is incomplete or corrupt; redoing it", run_dir)
        return None
    recorded, status, metrics = found
    if recorded.get("key") == key:
        log.info("%s is already done (same configuration, same code); skipping (overwrite=true to redo)", run_dir)
        return metrics
    if not _same_config_other_code(recorded, key, config_key):
        log.warning("%s holds the results of a different configuration; redoing it", run_dir)
        return None
    if not reuse_other_code:
        log.warning("%s holds results made by other code (code %s, now %s); redoing it (reuse_other_code=true "
                    "reuses them, marked stale_code)", run_dir, _code_of(recorded)[:12], code[:12])
        return None
    mark = {"reused_code_from": recorded.get("reused_code_from") or _code_of(recorded)}
    write_json(run_dir / "status.json", {**status, **mark})
    write_json(run_dir / "run_key.json", {**recorded, **mark})
    log.warning("%s was made by other code (code %s, now %s); reused as asked (reuse_other_code=true) and "
                "marked stale_code", run_dir, mark["reused_code_from"][:12], code[:12])
    return metrics


def reuse_sibling(run_dir: Path, key: str, config_key: str | None = None, code: str = "",
                  reuse_other_code: bool = False) -> dict | None:
    """A finished run in a sibling folder whose results this run may take: one with the same key (a
    sweep cell whose overrides differ only in fields its method never reads), or, with
    `reuse_other_code`, one of the same configuration made by other code (the newest; marked
    `reused_code_from`). Without the opt-in such a run is named in a log line and this run computes.
    Its outputs are copied here and its metrics returned; None when this run must compute."""
    other_code = []
    for folder in sorted(run_dir.parent.iterdir()):
        if folder == run_dir or not folder.is_dir() or (found := _finished(folder)) is None:
            continue
        recorded, _, metrics = found
        if recorded.get("key") == key:
            return _copy_run(folder, run_dir, metrics, {"reused_from": folder.name, **_stale_mark(recorded)},
                             "has the same key (the overrides differ only in fields the method never reads)")
        if config_key is not None and _same_config_other_code(recorded, key, config_key):
            other_code.append((folder, recorded, metrics))
    if not other_code:
        return None
    folder, recorded, metrics = max(other_code, key=lambda f: (f[0] / "metrics.json").stat().st_mtime_ns)
    theirs = recorded.get("reused_code_from") or _code_of(recorded)
    if not reuse_other_code:
        log.warning("%s holds this configuration's results made by other code (code %s, now %s); computing them "
                    "anew (reuse_other_code=true reuses them, marked stale_code)", folder, theirs[:12], code[:12])
        return None
    return _copy_run(folder, run_dir, metrics, {"reused_from": folder.name, "reused_code_from": theirs},
                     f"holds this configuration's results made by other code (code {theirs[:12]}, now {code[:12]}); "
                     "reused as asked (reuse_other_code=true) and marked stale_code")


def _copy_run(source: Path, run_dir: Path, metrics: dict, mark: dict, why: str) -> dict:
    """Copies a finished run's outputs into run_dir, records where they came from, returns its metrics."""
    import shutil

    for item in source.iterdir():
        if item.name in SIBLING_SKIP or item.name.startswith("."):
            continue
        target = run_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    key_file = run_dir / "run_key.json"
    write_json(key_file, {**(read_json(key_file) or {}), **mark})
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "status.json", {"status": "done", **mark})
    (log.warning if "reused_code_from" in mark else log.info)("%s %s: its results are reused in %s", source, why,
                                                                run_dir)
    return metrics


def _lock(path: Path, num_processes: int | None = None):
    """An inter-process file lock that says so when it has to wait for another process. The processes
    of one distributed launch (torchrun, accelerate) cooperate on the same folders, so among them only
    rank 0 takes it."""
    import contextlib

    from filelock import FileLock, Timeout

    world = num_processes if num_processes is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        lock = FileLock(path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("waiting for %s (another process holds its lock %s)", path.parent, path)
            lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    return held()


def measure_latency(cfg: DictConfig) -> dict:
    """`task=latency`: the full model and the method timed in the same run (eager, or compiled with
    `compile=true`): warm-ups, `metrics.latency.repeats` timed runs with device synchronisation, median
    and spread, peak memory; no images are saved and no quality metric is computed."""
    from .latency import compare
    from .pipelines import load_pipeline, pick_device, pick_dtype

    method = method_config(cfg)
    prompts = prompts_for(cfg)[: cfg.metrics.latency.num_prompts]
    if not prompts:
        raise checks.ConfigError("the prompt set is empty: check data.path, data.limit, data.categories and data.shard")
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    gen = lambda: [torch.Generator().manual_seed(_seed(cfg, p)) for p in prompts]  # noqa: E731
    log.info("timing %d prompt(s) on %s (%s): %d warm-up and %d timed runs per variant, compile=%s",
             len(prompts), device, dtype, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats, cfg.compile)
    out = compare(pipe, lambda **o: pipe([p.text for p in prompts], generator=gen(), **{**kwargs, **o}), method,
                  device, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats, cfg.compile, cfg.compile_mode)
    out.update(latency_prompts=len(prompts), latency_warmup=cfg.metrics.latency.warmup)
    return out


def count_macs(cfg: DictConfig) -> dict:
    model_cfg = transformer_config(OmegaConf.to_container(cfg.model, resolve=True))
    from .macs import report_for_model

    return report_for_model(model_cfg, method_config(cfg)).as_metrics()


def generate_and_evaluate(cfg: DictConfig, run_dir: Path) -> dict | None:
    from accelerate import PartialState

    from .generate import batches, generate, image_path, run_batch
    from .pipelines import load_pipeline, pick_device, pick_dtype

    method = method_config(cfg)  # fails here, before any model load, on bad method values
    prompts = prompts_for(cfg)
    checks.check_prompts(cfg, prompts)
    state = PartialState()
    device = pick_device(cfg.device) if state.num_processes == 1 else state.device
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    variant = cfg.method.name
    folders = {"full": run_dir / "images" / "full", variant: run_dir / "images" / variant}

    shared_full = full_image_cache(cfg, kwargs, dtype, device)
    # Processes share out whole batches, so an image never depends on the number of processes.
    with state.split_between_processes(batches(prompts, cfg.batch_size)) as mine:
        # The full model's images depend only on model, prompts, seed, call, dtype, device, batch size and
        # code: shared by every run and sweep cell with the same ones. Locked: concurrent cells wait, then reuse.
        shared_full.mkdir(parents=True, exist_ok=True)
        from .latency import compiled_blocks

        with _lock(shared_full / ".lock", state.num_processes), compiled_blocks(pipe.transformer, cfg.compile,
                                                                                cfg.compile_mode):
            if state.num_processes == 1:  # another rank may be writing its share
                clean_temporaries(shared_full)
            generate(pipe, list(mine), shared_full, cfg.seed, kwargs, cfg.overwrite, desc="full model")
        link_images(shared_full, folders["full"], [p.index for _, batch in mine for p in batch])
        if method is not None:
            with cat.apply(pipe, method, compile=cfg.compile, compile_mode=cfg.compile_mode) as handle:
                method_kwargs = {**kwargs, **handle.call_overrides(kwargs["num_inference_steps"])}

                def first_batch(number, batch, images) -> None:
                    if number == 0:
                        _probe_first_batch(handle, batch, run_dir, prompts[0].text)

                generate(pipe, list(mine), folders[variant], cfg.seed, method_kwargs, cfg.overwrite,
                         on_batch=first_batch, desc=variant)
                if state.is_main_process and _probe_missing(handle, run_dir):
                    # the first batch's images were already there (a resumed run): generate it once more,
                    # whole, for what the method reports of it
                    log.info("%s: generating the first batch again for the method's statistics", variant)
                    first = batches(prompts, cfg.batch_size)[0][1]
                    first_batch(0, first, run_batch(pipe, first, cfg.seed, method_kwargs))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None  # the main process evaluates and writes the merged results

    records = [{"index": p.index, "prompt": p.text, "seed": _seed(cfg, p), "variant": name,
                "path": str(image_path(folder, p.index).relative_to(run_dir)), **p.meta}
               for name, folder in folders.items() if name == "full" or method is not None for p in prompts]
    metrics = {"num_images": len(prompts), "dtype": str(dtype).removeprefix("torch.")}
    metrics.update(read_json(run_dir / FIRST_BATCH) or {})
    metrics.update(_image_metrics(cfg, run_dir, prompts, folders, variant, method, records))
    if cfg.metrics.macs:
        metrics.update(realised_macs(pipe, cfg, method, prompts, kwargs))
    if cfg.metrics.latency.enabled:
        from .latency import compare

        sample = prompts[: cfg.metrics.latency.num_prompts]
        gen = lambda: [torch.Generator().manual_seed(_seed(cfg, p)) for p in sample]  # noqa: E731
        metrics.update(compare(pipe, lambda **o: pipe([p.text for p in sample], generator=gen(), **{**kwargs, **o}),
                               method, device, cfg.metrics.latency.warmup, cfg.metrics.latency.repeats,
                               cfg.metrics.latency.compile, cfg.compile_mode))
    write_lines(run_dir / "records.jsonl", records)
    _figures(cfg, run_dir, prompts, folders, variant)
    _log(cfg, run_dir, metrics)
    return metrics


def full_image_cache(cfg: DictConfig, kwargs: dict, dtype, device) -> Path:
    """The shared folder of the full model's images, keyed by everything they depend on (the prompt
    list, a local model and the code by content; batch size too, since batched and single generation
    differ in the last bits)."""
    run_material = identity.key_material(OmegaConf.to_container(cfg, resolve=True))  # a local model by content
    material = {"model": run_material["model"], "call": kwargs, "dtype": str(dtype),
                "device": torch.device(device).type, "seed": cfg.seed, "batch_size": cfg.batch_size,
                "prompts_sha256": run_material["data"]["prompts_sha256"], "code": run_material["code"]}
    if cfg.compile:
        material["compile"] = [cfg.compile, cfg.compile_mode]
    folder = Path(cfg.output_root) / "full_images" / f"{cfg.model.name}-{identity.digest(material)[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        write_json(folder / "key.json", material)
    return folder


def link_images(source: Path, folder: Path, indices: list[int]) -> None:
    """Hard-links (or copies, across file systems) cached images into a run's folder, so a copied
    run folder is complete on its own."""
    import os
    import shutil

    from .generate import image_path

    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        src, dst = image_path(source, i), image_path(folder, i)
        if dst.is_symlink():
            dst.unlink()  # from an older layout
        if dst.exists():
            if os.path.samefile(src, dst):
                continue
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def _seed(cfg, prompt) -> int:
    from .generate import prompt_seed

    return prompt_seed(cfg.seed, prompt.index)


FIRST_BATCH = "first_batch.json"  # what the method reports of the run's first batch (its cache memory)


def _has_selection(handle) -> bool:
    return isinstance(handle, cat.CATHandle)  # methods on CAT's token machinery


def _probe_missing(handle, run_dir: Path) -> bool:
    return (_has_selection(handle) or hasattr(handle, "cache_bytes")) and not (run_dir / FIRST_BATCH).exists()


def _probe_first_batch(handle, batch, run_dir: Path, prompt: str) -> None:
    """Records what the method reports after the run's first batch (the same batch whether the run is
    fresh or resumed): the first prompt's selection statistics (selection.npz), then its cache memory
    (first_batch.json, written last: its presence says the probe is complete)."""
    from .figures import save_selection

    if _has_selection(handle):
        stats = handle.stats
        if stats.labels is not None or any(s.active is not None for s in stats.steps):
            save_selection(stats, run_dir / "selection.npz", prompt=prompt)
    cache = {"cache_bytes": handle.cache_bytes(), "cache_batch": len(batch)} if hasattr(handle, "cache_bytes") else {}
    write_json(run_dir / FIRST_BATCH, cache)


def realised_macs(pipe, cfg: DictConfig, method, prompts, kwargs) -> dict:
    """Executed transformer MACs per image of the full model and of the method, counted while they run
    on the first `metrics.macs_prompts` prompts (one batch, the run's seeds)."""
    from .macs import realised_transformer_macs

    sample = prompts[: max(1, int(cfg.metrics.get("macs_prompts", 4)))]

    def call(**overrides):
        gens = [torch.Generator().manual_seed(_seed(cfg, p)) for p in sample]
        pipe([p.text for p in sample], generator=gens, **{**kwargs, **overrides})

    log.info("counting executed MACs: full model, %d prompt(s) ...", len(sample))
    full = realised_transformer_macs(pipe, call) / len(sample)
    out = {"transformer_macs_full": full, "transformer_macs_per_step_full": full / cfg.model.steps,
           "macs_prompts": len(sample)}
    if method is None:
        return out
    log.info("counting executed MACs: %s, %d prompt(s) ...", cfg.method.name, len(sample))
    with cat.apply(pipe, method) as handle:
        overrides = handle.call_overrides(kwargs["num_inference_steps"])
        done = realised_transformer_macs(pipe, lambda: call(**overrides)) / len(sample)
    out.update({"transformer_macs": done, "macs_reduction": 1.0 - done / full})
    return out


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

    if m.adherence and cfg.data.name in JUDGED:
        judge = importlib.import_module(f"experiments.{cfg.data.name}").judge
        log.info("metrics: the %s judge on %d image(s) ...", cfg.data.name, len(prompts) * len(names))

        for name in names:
            scores = [judge(img, p.text)["score"] for img, p in zip(images[name], prompts)]
            put(name, "adherence", scores)
            out["adherence" if name == variant else "adherence_full"] = sum(scores) / len(scores)
    if m.clip.enabled:
        from .metrics.clip_score import ClipScorer

        log.info("metrics: CLIP score (%s) on %d image(s) ...", m.clip.model, len(prompts) * len(names))
        scorer = ClipScorer(m.clip.backend, m.clip.model, m.clip.pretrained, batch_size=m.clip.batch_size)
        for name in names:
            scores = scorer.score(images[name], [p.text for p in prompts])
            put(name, "clip_score", scores.tolist())
            out["clip_score" if name == variant else "clip_score_full"] = scores.mean().item()
    if method is not None and m.fidelity:
        from .metrics.fidelity import fidelity

        log.info("metrics: PSNR, SSIM%s against the full model on %d image(s) ...", ", LPIPS" if m.lpips else "",
                 len(prompts))
        fid_ = fidelity(images[variant], images["full"], lpips=m.lpips)
        for key, values in fid_.pop("per_image").items():
            put(variant, key, values)
        out.update(fid_)
    if m.fid.enabled:
        from .metrics.fid import fid

        log.info("metrics: FID on %d image(s) ...", len(prompts))
        cache = Path(m.fid.cache_dir).expanduser()
        if m.fid.reference:
            for name in names:
                res = fid(images[name], m.fid.reference, cache_dir=cache, weights_path=m.fid.weights)
                out["fid" if name == variant else "fid_full"] = res["fid"]
                out["fid_num_reference"] = res["num_reference"]
        if method is not None and m.fid.vs_full:
            out["fid_vs_full"] = fid(images[variant], images["full"], weights_path=m.fid.weights)["fid"]
    from .stats import mean_ci

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


def _figures(cfg, run_dir: Path, prompts, folders, variant) -> None:
    from .figures import image_grid, selection_figure
    from .generate import image_path

    shown = prompts[:8]
    labels = {name: name for name in folders}
    labels["full"] = f"full model ({cfg.model.steps} steps)"
    if variant in folders:
        knob = cfg.method.get("knob")
        setting = f" {knob}={cfg.method.config[knob]}" if knob and cfg.method.get("config") else ""
        labels[variant] = f"{variant}{setting}"
    rows = {labels[name]: [image_path(folder, p.index) for p in shown] for name, folder in folders.items()
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
