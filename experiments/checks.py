"""Checks of a composed config that run before any model is loaded (and before any prompt set is
downloaded: a local prompt file or the bundled prompts are read and checked).

Each failure is a `ConfigError` with one line that names the setting, its value and what is
allowed; `run.py` prints it without a traceback.
"""

from __future__ import annotations

import dataclasses

import functools
import logging
import numbers
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

TASKS = ("generate", "macs", "latency", "compare")


class ConfigError(ValueError):
    """A setting is invalid; the message says which, and what is allowed."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def token_geometry(model: dict) -> tuple[int, int, int]:
    """(patch in pixels, token rows, token columns) of a model config at its resolution."""
    from cat.families import family_of_class

    from .config_files import transformer_config

    arch = transformer_config(model)["transformer"]
    family = family_of_class(arch["class"])
    vae_scale = int(((model.get("macs") or {}).get("vae_scale")) or 8)
    patch = family.token_patch(arch["config"]) if family else int(arch["config"].get("patch_size") or 1)
    pixels = vae_scale * patch
    return pixels, int(model["height"]) // pixels, int(model["width"]) // pixels


def validate(cfg: DictConfig):
    """Raises ConfigError for the first invalid setting of a run; returns the method's config (None for the
    full model)."""
    task = cfg.get("task")
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is invalid; allowed: {', '.join(TASKS)}")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    steps = model.get("steps")
    if not _is_int(steps) or steps <= 0:
        raise ConfigError(f"model.steps={steps!r} is invalid; allowed: an integer >= 1")
    if not _is_num(model.get("guidance_scale")):
        raise ConfigError(f"model.guidance_scale={model.get('guidance_scale')!r} is invalid; allowed: a number "
                          "(1 or less disables classifier-free guidance)")
    for side in ("height", "width"):
        if not _is_int(model.get(side)) or model[side] <= 0:
            raise ConfigError(f"model.{side}={model.get(side)!r} is invalid; allowed: a positive integer")
    from .config_files import resolve

    if model.get("local_path") and not (resolve(model["local_path"]) / "model_index.json").exists():
        how = model.get("train_command") or f"python scripts/train_tiny.py --out {model['local_path']}"
        raise ConfigError(f"model={model['name']} is not at {model['local_path']}: train it with `{how}` "
                          "(or point model.local_path at a copy)")
    if not isinstance(model.get("scheduler") or {}, dict):
        raise ConfigError(f"model.scheduler={model.get('scheduler')!r} is invalid; allowed: a mapping of scheduler "
                          "settings, e.g. +model.scheduler.shift=3.0")
    revision = model.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ConfigError(f"model.revision={revision!r} is invalid; allowed: a branch, tag or commit of "
                          f"{model.get('repo')}")
    if "revision" in (model.get("load_kwargs") or {}):
        raise ConfigError("model.load_kwargs.revision is not allowed; set model.revision (the run is keyed by the "
                          "commit it resolves to)")
    try:
        pixels, rows, cols = token_geometry(model)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err
    for side in ("height", "width"):
        if model[side] % pixels:
            raise ConfigError(f"model.{side}={model[side]} is invalid for {model['name']}: it must be a multiple of "
                              f"{pixels} (VAE scale x patch size)")
    method = method_config(cfg)
    if method is not None:
        _check_method(cfg, method, steps, rows * cols)
    if task == "compare":
        _check_compare(cfg, method)
    if task == "macs":
        if method is not None and method.offline_schedule(steps, rows * cols) is None:
            raise ConfigError(f"task=macs counts MACs from the image tokens a method recomputes per step, known before "
                              f"running; method={cfg.method.name} does not say them: use task=generate (its "
                              "metrics.json holds the executed MACs)")
        return method
    from .pipelines import DTYPES, check_device, resolved_device_type

    batch = cfg.get("batch_size")
    if not _is_int(batch) or batch <= 0:
        raise ConfigError(f"batch_size={batch!r} is invalid; allowed: an integer >= 1")
    if cfg.get("compile") not in (True, False):
        raise ConfigError(f"compile={cfg.get('compile')!r} is invalid; allowed: true, false")
    if cfg.get("compile"):
        if task == "generate" and cfg.metrics.get("macs"):
            raise ConfigError("compile=true with metrics.macs=true is refused: executed MACs are counted by a flop "
                              "counter inside every transformer call, and under it torch.compile runs the compiled "
                              "blocks eagerly, so the counted images would not be the compiled ones. Set "
                              "metrics.macs=false (task=macs counts a fixed-schedule method offline), or compile=false")
        import cat

        try:
            cat.check_compile(cfg.get("compile_mode", "default"), resolved_device_type(str(cfg.device)))
        except (ValueError, RuntimeError) as err:
            raise ConfigError(str(err)) from err
    if not _is_int(cfg.get("seed")):
        raise ConfigError(f"seed={cfg.get('seed')!r} is invalid; allowed: an integer")
    try:
        check_device(str(cfg.device))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    dtype = cfg.dtype
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is invalid; allowed: auto, {', '.join(DTYPES)}")
    if dtype == "float16" and resolved_device_type(str(cfg.device)) == "cpu":
        log.warning("dtype=float16 on the CPU: supported by torch but slow and less accurate than float32; "
                    "use dtype=auto (float32) or bfloat16 unless you are testing half precision")
    if (cfg.metrics.get("image_reward") or {}).get("enabled"):
        from .metrics import imagereward

        if not imagereward.available():
            raise ConfigError("metrics.image_reward.enabled=true needs the ImageReward package: "
                              "pip install -e '.[imagereward]' (or set metrics.image_reward.enabled=false)")
    data = cfg.data
    limit = data.get("limit")
    if limit is not None and (not _is_int(limit) or limit < -1):
        raise ConfigError(f"data.limit={limit!r} is invalid; allowed: -1 or null (all prompts), 0 or a positive count")
    if not _is_int(data.get("num_shards", 1)) or data.get("num_shards", 1) < 1:
        raise ConfigError(f"data.num_shards={data.get('num_shards')!r} is invalid; allowed: an integer >= 1")
    if not _is_int(data.get("shard", 0)) or not 0 <= data.get("shard", 0) < data.get("num_shards", 1):
        raise ConfigError(f"data.shard={data.get('shard')!r} is invalid; allowed: 0 .. data.num_shards-1")
    from .data import LOADERS, SOURCES

    if data.get("name") not in LOADERS:
        raise ConfigError(f"data.name={data.get('name')!r} is invalid; allowed: {', '.join(LOADERS)}")
    if data.get("source", "hub") not in SOURCES:
        raise ConfigError(f"data.source={data.get('source')!r} is invalid; allowed: {', '.join(SOURCES)}")
    from .data import SPLITS

    if data.get("split", "evaluation") not in SPLITS:
        raise ConfigError(f"data.split={data.get('split')!r} is invalid; allowed: {', '.join(SPLITS)}")
    if data.get("calibration_path"):
        from .config_files import resolve

        if not resolve(data.calibration_path).is_file():
            raise ConfigError(f"data.calibration_path={data.calibration_path!r} is not a file; give a UTF-8 text "
                              "file with one calibration prompt per line")
    if data.get("path"):
        from .config_files import resolve

        if not resolve(data.path).is_file():
            raise ConfigError(f"data.path={data.path!r} is not a file; give {FORMATS.get(data.name, FORMATS[None])}")
    if data.get("path") or data.name in JUDGED:  # a local file or bundled prompts: cheap to read here
        check_prompts(cfg, read_prompts(cfg))
    return method


def check_output_root(value) -> None:
    """`output_root` must be a folder this process can create and write (Hydra creates run folders in it
    before any task runs)."""
    path = Path(str(value)).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"output_root={str(value)!r} {what}; allowed: a folder (existing or new) you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"cannot be created: {existing} is"
        raise ConfigError(f"output_root={str(value)!r} {what} not writable for this user; allowed: a folder "
                          "(existing or new) you can write to")


def method_config(cfg: DictConfig):
    """The method's config object (None for the full model), validated by its class; ConfigError names the
    bad field. Built once per process for each resolved method config."""
    if cfg.method.get("config") is None:
        return None
    try:
        return build_method(OmegaConf.to_container(cfg.method.config, resolve=True))
    except Exception as err:  # Hydra wraps the dataclass's ValueError: surface the field and range
        cause = err.__cause__ or err
        raise ConfigError(f"method={cfg.method.name}: {cause}") from err


def _check_compare(cfg: DictConfig, method) -> None:
    """task=compare: a method with a compute knob, a known variant, targets in (0, 1), no sweep level."""
    from .compare import VARIANTS, Plan

    if method is None:
        raise ConfigError("task=compare compares a method with the full model: method=none is not allowed")
    if cfg.get("level") is not None:
        raise ConfigError(f"level={cfg.level} is not allowed with task=compare: the comparison moves the method's "
                          "knob itself (leave level unset)")
    compare = cfg.get("compare") or {}
    if compare.get("variant") not in VARIANTS:
        raise ConfigError(f"compare.variant={compare.get('variant')!r} is invalid; allowed: {', '.join(VARIANTS)}")
    targets = list(compare.get("targets") or [])
    if not targets or not all(_is_num(t) and 0 < t < 1 for t in targets):
        raise ConfigError(f"compare.targets={targets} is invalid; allowed: a list of executed-MACs reductions in "
                          "(0, 1), e.g. [0.4, 0.5, 0.6]")
    n = compare.get("calibration_prompts")
    if not _is_int(n) or n < 1:
        raise ConfigError(f"compare.calibration_prompts={n!r} is invalid; allowed: an integer >= 1")
    tol = compare.get("tolerance")
    if not _is_num(tol) or not 0 < tol < 0.1:
        raise ConfigError(f"compare.tolerance={tol!r} is invalid; allowed: a reduction in (0, 0.1), e.g. 0.01")
    try:
        plan = Plan.of(cfg.method)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    fields = {f.name for f in dataclasses.fields(method)}
    for name in [plan.knob, *plan.tune]:
        if name not in fields:
            raise ConfigError(f"method={cfg.method.name}: `{name}` (its knob or a tuned field) is not a field of "
                              f"{type(method).__name__}; fields: {', '.join(sorted(fields))}")


def build_method(config: dict):
    """The config object a resolved `method.config` (with its `_target_`) builds; cached by content."""
    import json

    return _build(json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _build(config_json: str):
    import json

    from hydra.utils import instantiate

    return instantiate(json.loads(config_json))


def _check_method(cfg: DictConfig, method, steps: int, num_tokens: int) -> None:
    """What the method's config says about this model, step count, image size and device."""
    name, model = cfg.method.name, cfg.model
    transformer_class = model.transformer["class"]
    missing = method.missing_calibration(transformer_class)
    if missing:
        raise ConfigError(f"method={name} {missing}: run `python scripts/calibrate.py method={name} "
                          f"model={model.name} model.steps={steps}` once")
    if cfg.get("task") == "generate":
        from .pipelines import resolved_device_type

        device = resolved_device_type(str(cfg.device))
        try:
            method.check_model(transformer_class, cfg.device if device == "cuda" and cfg.device != "auto" else device)
        except (ValueError, NotImplementedError) as err:
            raise ConfigError(f"method={name}: {err}") from err
    try:
        method.check_steps(steps)
        method.check_tokens(num_tokens)
    except ValueError as err:
        raise ConfigError(f"method={name} with model={model.name} at {steps} steps and {num_tokens} image "
                          f"tokens: {err}") from err


JUDGED = ("shapes", "scenes")  # prompt sets with a weight-free adherence judge (experiments/<name>)
FORMATS = {"parti": "a PartiPrompts.tsv (tab-separated, with Prompt, Category and Challenge columns)",
           "coco2017": "a COCO captions JSON (captions_val2017.json) or the hub's parquet file",
           None: "a UTF-8 text file with one prompt per line"}


def read_prompts(cfg: DictConfig) -> list:
    """The run's prompt list; ConfigError names `data.path` when that file cannot be read or holds none."""
    from . import data as datasets
    from .config_files import resolve

    d = cfg.data

    def load(limit=None, categories=None, shard=0, num_shards=1):
        return datasets.prompts_of({**d, "limit": limit, "categories": categories, "shard": shard,
                                    "num_shards": num_shards})

    if not d.get("path"):
        return load(d.get("limit"), d.get("categories"), d.get("shard", 0), d.get("num_shards", 1))
    path, expected = d.path, FORMATS.get(d.name, FORMATS[None])
    if not str(path).endswith(".parquet"):
        raw = resolve(path).read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"data.path={path!r} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                              f"{err.start}); give {expected}") from err
    try:
        prompts = load(d.get("limit"), d.get("categories"), d.get("shard", 0), d.get("num_shards", 1))
        everything = prompts or load()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"data.path={path!r} cannot be read as data={d.name} prompts ({type(err).__name__}: "
                          f"{err}); give {expected}") from err
    if not everything:
        raise ConfigError(f"data.path={path!r} holds no prompts; give {expected}")
    return prompts


def check_prompts(cfg: DictConfig, prompts) -> None:
    """Checks that need the prompt list (loaded, but before any model): the adherence judge's grammar."""
    if not prompts:
        raise ConfigError("the prompt set is empty: check data.path, data.limit, data.categories and data.shard")
    if cfg.get("task") == "generate" and cfg.metrics.get("adherence") and cfg.data.name in JUDGED:
        import importlib

        parse = importlib.import_module(f"experiments.{cfg.data.name}.grammar").parse
        for p in prompts:
            try:
                parse(p.text)
            except ValueError as err:
                raise ConfigError(f"prompt {p.index} is outside the {cfg.data.name} judge's grammar ({err}); fix "
                                  "the prompt file or set metrics.adherence=false") from err
