"""Checks of a composed config, run before any model is loaded (and before any prompt set is downloaded: a
local prompt file or the bundled prompts are read and checked).

`validate` checks what every task shares (the task's name, the model) and builds the method's config, then
hands over to the task's own check (`Task.check`), which is made of the pieces here: `check_method` (what
the method's config says about this model, step count, image size and device) and, for the tasks that load
a model, `check_run` (batch, compile, seed, device, dtype, the metrics, the prompt set).

Each failure is a `ConfigError` with one line that names the setting, its value and what is allowed;
`run.py` prints it without a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import cat

from ..base.config_files import ConfigError, calibration_source, resolve
from ..base.devices import DTYPES, check_device, resolved_device_type
from ..base.methods import build_method
from ..base.models import token_geometry
from ..metrics.registry import enabled
from ..prompts import sets
from ..run.generate import check_call_kwargs
from ..run.pipelines import model_snapshot
from .registry import TASKS

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
RESOLVER_PREFIX = re.compile(r"^\w+ raised while resolving interpolation: ")


def validate(cfg: DictConfig):
    """Raises ConfigError for the first invalid setting of a run; returns the method's config (None for the
    full model)."""
    task = cfg.get("task")
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is invalid; allowed: {', '.join(TASKS)}")
    check_name(cfg.get("name"))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    steps = model.get("steps")
    if not cat.is_int(steps) or steps <= 0:
        raise ConfigError(f"model.steps={steps!r} is invalid; allowed: an integer >= 1")
    if not cat.is_num(model.get("guidance_scale")):
        raise ConfigError(f"model.guidance_scale={model.get('guidance_scale')!r} is invalid; allowed: a number "
                          "(1 or less disables classifier-free guidance)")
    for side in ("height", "width"):
        if not cat.is_int(model.get(side)) or model[side] <= 0:
            raise ConfigError(f"model.{side}={model.get(side)!r} is invalid; allowed: a positive integer")
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
    check_call_kwargs(model)
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
    TASKS[task].check(cfg, method)
    return method


def check_run(cfg: DictConfig, counts_macs: bool = False) -> list | None:
    """The settings of a task that loads the model and calls it: batch size, compilation (refused with
    `counts_macs`: a flop counter would run the compiled blocks eagerly), seed, device, dtype, what the
    enabled metrics need, and the prompt set. Returns the prompts when they were cheap to read here (a local
    file or a bundled set), else None."""
    batch = cfg.get("batch_size")
    if not cat.is_int(batch) or batch <= 0:
        raise ConfigError(f"batch_size={batch!r} is invalid; allowed: an integer >= 1")
    if cfg.get("compile") not in (True, False):
        raise ConfigError(f"compile={cfg.get('compile')!r} is invalid; allowed: true, false")
    if cfg.get("compile"):
        if counts_macs:
            raise ConfigError("compile=true with metrics.macs=true is refused: executed MACs are counted by a flop "
                              "counter inside every transformer call, and under it torch.compile runs the compiled "
                              "blocks eagerly, so the counted images would not be the compiled ones. Set "
                              "metrics.macs=false (task=macs counts a fixed-schedule method offline), or compile=false")
        try:
            cat.check_compile(cfg.get("compile_mode", "default"), resolved_device_type(str(cfg.device)))
        except (ValueError, RuntimeError) as err:
            raise ConfigError(str(err)) from err
    seed = cfg.get("seed")
    if not cat.is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed!r} is invalid; allowed: an integer in [0, {MAX_SEED}] (prompt i is generated "
                          "from the seed seed * 1000003 + i, which a torch generator must hold)")
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
    for metric in enabled(cfg.metrics, cfg.data.get("name")):
        try:
            metric.check(cfg.metrics)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    data = cfg.data
    limit = data.get("limit")
    if limit is not None and (not cat.is_int(limit) or limit < -1):
        raise ConfigError(f"data.limit={limit!r} is invalid; allowed: -1 or null (all prompts), 0 or a positive count")
    if not cat.is_int(data.get("num_shards", 1)) or data.get("num_shards", 1) < 1:
        raise ConfigError(f"data.num_shards={data.get('num_shards')!r} is invalid; allowed: an integer >= 1")
    if not cat.is_int(data.get("shard", 0)) or not 0 <= data.get("shard", 0) < data.get("num_shards", 1):
        raise ConfigError(f"data.shard={data.get('shard')!r} is invalid; allowed: 0 .. data.num_shards-1")
    if data.get("name") not in sets.LOADERS:
        raise ConfigError(f"data.name={data.get('name')!r} is invalid; allowed: {', '.join(sets.LOADERS)}")
    if data.get("source", "hub") not in sets.SOURCES:
        raise ConfigError(f"data.source={data.get('source')!r} is invalid; allowed: {', '.join(sets.SOURCES)}")
    if data.get("split", "evaluation") not in sets.SPLITS:
        raise ConfigError(f"data.split={data.get('split')!r} is invalid; allowed: {', '.join(sets.SPLITS)}")
    if data.get("calibration_path") and not resolve(data.calibration_path).is_file():
        raise ConfigError(f"data.calibration_path={data.calibration_path!r} is not a file; give a UTF-8 text "
                          "file with one calibration prompt per line")
    if data.get("path") and not resolve(data.path).is_file():
        expected = sets.FORMATS.get(data.name, sets.FORMATS[None])
        raise ConfigError(f"data.path={data.path!r} is not a file; give {expected}")
    check_weights(cfg)
    if data.get("path") or sets.bundled_package(data.name) is not None:  # a local file or bundled prompts: cheap
        prompts = read_prompts(cfg)
        check_prompts(cfg, prompts)
        return prompts
    return None


def check_weights(cfg: DictConfig) -> None:
    """A hub model the run loads must be somewhere: refused when neither the hub nor the local hub cache can say
    which commit it is (not downloaded yet, and no network, HF_HUB_OFFLINE=1, or a gated repo without a token),
    instead of failing in the loader after the run's folder is made."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    commit = model_snapshot(model)
    if commit is not None and commit.startswith("unresolved:"):
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ConfigError(
            f"model={model['name']}: {model['repo']} at revision {commit.split(':', 1)[1]!r} is not in the local hub "
            f"cache and the hub could not be asked{offline}. Fetch it once with network access: `huggingface-cli "
            f"download {model['repo']}` (gated models need `huggingface-cli login` or the HF_TOKEN environment "
            "variable), or point model.local_path at a downloaded copy; task=macs needs no weights")


def check_output_root(value) -> None:
    """`output_root` must be a folder this process can create and write (Hydra creates run folders in it
    before any task runs): its nearest existing folder is asked for a new folder (made and removed again), which
    also catches file systems that refuse folders whatever the permissions say (/proc, a read-only mount)."""
    path = Path(str(value)).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"output_root={str(value)!r} {what}; allowed: a folder (existing or new) you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"cannot be created: {existing} is"
        raise ConfigError(f"output_root={str(value)!r} {what} not writable for this user; allowed: a folder "
                          "(existing or new) you can write to")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cat-check-", dir=existing))
    except OSError as err:
        what = "is" if existing == path else f"cannot be created: {existing} is"
        raise ConfigError(f"output_root={str(value)!r} {what} not a folder new folders can be made in "
                          f"({err.strerror or err}); allowed: a folder (existing or new) you can write to") from err


def check_name(value) -> None:
    """`name` is one folder under `output_root/runs/`: no path separator, not `.` or `..`."""
    text = str(value) if value is not None else ""
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ConfigError(f"name={value!r} is invalid; allowed: a folder name without / or \\ (runs are written to "
                          "output_root/runs/<name>/), e.g. name=my-experiment")


def method_config(cfg: DictConfig):
    """The method's config object (None for the full model), validated by its class; ConfigError names the
    bad field. Built once per process for each resolved method config."""
    if cfg.method.get("config") is None:
        return None
    try:
        return build_method(OmegaConf.to_container(cfg.method.config, resolve=True))
    except Exception as err:  # Hydra wraps the dataclass's ValueError: surface the field and range
        cause = str(err.__cause__ or err).splitlines()[0]
        # a resolver's refusal (a calibration made at another guidance scale) is said as the resolver says it
        raise ConfigError(f"method={cfg.method.name}: {RESOLVER_PREFIX.sub('', cause)}") from err


def check_method(cfg: DictConfig, method, device: bool = False) -> None:
    """What the method's config says about this model, step count and image size (and, with `device`, the
    model's transformer class on the run's device); nothing for the full model."""
    if method is None:
        return
    name, model = cfg.method.name, OmegaConf.to_container(cfg.model, resolve=True)
    steps, (_, rows, cols) = model["steps"], token_geometry(model)
    transformer_class = model["transformer"]["class"]
    missing = method.missing_calibration(transformer_class)
    if missing:  # named as the resolver reads it: another method name's (`method.calibration.of`) or step count's
        owner, made_for = calibration_source(cfg)
        raise ConfigError(f"method={name} {missing}: run `python scripts/calibrate.py method={owner} "
                          f"model={model['name']} model.steps={made_for}` once")
    if cfg.get("compile") or OmegaConf.select(cfg, "metrics.latency.compile", default=False):
        try:  # CUDA graphs would overwrite the caches of a method that is not graph-safe
            cat.check_cuda_graphs(type(method).handle, method, cfg.get("compile_mode", "default"))
        except ValueError as err:
            raise ConfigError(f"method={name}: {err}") from err
    if device:
        kind = resolved_device_type(str(cfg.device))
        try:
            method.check_model(transformer_class, cfg.device if kind == "cuda" and cfg.device != "auto" else kind)
        except (ValueError, NotImplementedError) as err:
            raise ConfigError(f"method={name}: {err}") from err
    try:
        method.check_steps(steps)
        method.check_tokens(rows * cols)
    except ValueError as err:
        raise ConfigError(f"method={name} with model={model['name']} at {steps} steps and {rows * cols} image "
                          f"tokens: {err}") from err


def read_prompts(cfg: DictConfig) -> list:
    """The run's prompt list; ConfigError names `data.path` when that file cannot be read or holds none."""
    d = cfg.data

    def load(limit=None, categories=None, shard=0, num_shards=1):
        return sets.prompts_of({**d, "limit": limit, "categories": categories, "shard": shard,
                                    "num_shards": num_shards})

    if not d.get("path"):
        return load(d.get("limit"), d.get("categories"), d.get("shard", 0), d.get("num_shards", 1))
    path, expected = d.path, sets.FORMATS.get(d.name, sets.FORMATS[None])
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
    """Checks that need the prompt list (loaded, but before any model): it holds prompts."""
    if not prompts:
        raise ConfigError("the prompt set is empty: check data.path, data.limit, data.categories and data.shard")
