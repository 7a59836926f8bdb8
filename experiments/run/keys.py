"""Run identity: the run key.

A run's folder is `<readable prefix>-<key>`, where the key is a SHA-256 of everything that changes
the run's output: the task, the resolved model and method configs, the *content* of a local model's
files (a retrained model at the same path is a new run), the commit a hub model's revision resolves to
(a hub repo updated under `main` is a new run, and the loader loads exactly that commit), the call
(steps, resolution, guidance), seed, dtype, device type, batch size, the metrics, the *content* of
the prompt list, and the *code*: the content of the library and experiment code and the versions of
torch, diffusers and transformers (`code_identity`).
Two runs that differ in any of these never share a folder; identical runs find and reuse theirs. A run
of the same configuration made by other code is only reused on request (`reuse_other_code=true`), and
is then marked in its folder and in every table.
The full material is written to `run_key.json` in the run folder. Secrets never enter it
(`experiments.base.secrets`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import re
from pathlib import Path

import cat

from ..base.config_files import ROOT, resolve
from ..base.devices import resolved_device_type
from ..base.methods import build_method
from ..base.secrets import is_secret, without_secrets
from ..prompts.sets import prompts_of
from .pipelines import model_snapshot


def prompts_digest(data: dict) -> str:
    """SHA-256 of the prompt list a data config yields (indices, texts and metadata), not of its path."""
    prompts = prompts_of(data)
    payload = json.dumps([[p.index, p.text, p.meta] for p in prompts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _prompts_digest_cached(data_json: str, mtime: float | None) -> str:
    return prompts_digest(json.loads(data_json))


def _file_mtime(path) -> float | None:
    try:
        return resolve(path).stat().st_mtime_ns if path else None
    except OSError:
        return None


# Files of a local model folder that describe it but never change its output.
NOT_WEIGHTS = frozenset({"README.md", "training.json", "training_log.txt"})


@functools.lru_cache(maxsize=16)
def _folder_digest(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def local_model_digest(path) -> str:
    """SHA-256 of the files of a local model folder (weights, configs, tokenizer), by content; cached in
    the process by (name, size, mtime) of every file. A missing folder gets a marker (validation names it)."""
    folder = resolve(path)
    if not folder.is_dir():
        return "missing"
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name not in NOT_WEIGHTS)
    stamp = tuple((f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _folder_digest(str(folder), stamp)


# The code that makes results: the library, the experiment layer and the entry point (not tests, docs,
# scripts, configs or results; the configs enter the key resolved).
CODE_PACKAGES = (cat.__name__, __name__.split(".")[0])
CODE_FILES = ("run.py",)


def code_files() -> list[tuple[str, Path]]:
    """The files whose content is the code identity: (name relative to the project, path), sorted."""
    files = []
    for package in CODE_PACKAGES:
        folder = Path(importlib.import_module(package).__file__).resolve().parent
        files += [(f.relative_to(folder.parent).as_posix(), f) for f in folder.rglob("*")
                  if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")]
    files += [(name, ROOT / name) for name in CODE_FILES if (ROOT / name).is_file()]
    return sorted(files)


def code_identity() -> dict:
    """The code a result is made by: SHA-256 of the content of `code_files()` (by name relative to the
    project, so a copy of the project elsewhere is the same code) and the versions of the libraries that
    compute the images. Part of every run key: results made by other code are never returned silently.
    Hashed once per process per (name, size, mtime) of every file."""
    import diffusers
    import torch
    import transformers

    stamp = tuple((name, str(path), path.stat().st_size, path.stat().st_mtime_ns) for name, path in code_files())
    return {"sha256": _code_digest(stamp), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


@functools.lru_cache(maxsize=8)
def _code_digest(stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, path, _, _ in stamp:
        h.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


def model_material(model):
    """A resolved model config as outputs depend on it: a local model with the digest of its files, a hub model
    with the commit its revision resolves to (the commit, not the revision's name: `main` at commit c and a
    pinned c make the same images)."""
    if isinstance(model, dict) and model.get("local_path"):
        return {**model, "files_sha256": local_model_digest(model["local_path"])}
    if isinstance(model, dict) and (commit := model_snapshot(model)):
        return {**{k: v for k, v in model.items() if k != "revision"}, "commit": commit}
    return model


def key_material(cfg: dict) -> dict:
    """What a run's output depends on, from a resolved config (a plain dict), secrets removed: the
    configuration, and the code that runs it (`code_identity`)."""
    cfg = without_secrets(cfg)
    material = {"task": cfg.get("task"), "model": cfg.get("model"), "method": method_material(cfg.get("method")),
                "code": code_identity()}
    if cfg.get("task") == "macs":  # counted from the configs alone
        return material
    material["model"] = model_material(material["model"])
    data = dict(cfg.get("data") or {})
    material.update({
        "data": {"name": data.get("name"), "prompts_sha256": _prompts_digest(data, data.get("path"))},
        "seed": cfg.get("seed"), "dtype": cfg.get("dtype"), "device": resolved_device_type(cfg.get("device", "auto")),
        "batch_size": cfg.get("batch_size"), "metrics": _without_retime(cfg.get("metrics")),
    })
    if cfg.get("task") == "compare":  # what the comparison searches, and on which calibration prompts
        method = cfg.get("method") or {}
        calib = {**data, "split": "calibration", "limit": (cfg.get("compare") or {}).get("calibration_prompts")}
        material["compare"] = {**(cfg.get("compare") or {}),
                               "calibration_sha256": _prompts_digest(calib, calib.get("calibration_path")),
                               **{k: method.get(k) for k in ("knob", "levels", "knob_range", "tune")}}
    if cfg.get("compile"):  # compiled kernels round differently
        material["compile"] = [cfg.get("compile"), cfg.get("compile_mode")]
    return material


def _without_retime(metrics):
    """The metrics settings without `latency.retime`: a request to time a finished run again, not another run."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("latency"), dict):
        return metrics
    return {**metrics, "latency": {k: v for k, v in metrics["latency"].items() if k != "retime"}}


def _prompts_digest(data: dict, file) -> str:
    """The digest of the prompts a data config asks for (`file`: the prompt file whose edits it must see)."""
    try:
        return _prompts_digest_cached(json.dumps(data, sort_keys=True, default=str), _file_mtime(file))
    except Exception as err:  # reported with its own message by validation; keyed so it cannot collide
        return f"unavailable: {type(err).__name__}: {err}"


def method_material(method) -> dict | None:
    """What a method contributes to the key: its name and every field of the config it instantiates
    (`dataclasses.asdict`, its class's path as `_target_`), without the fields the config says it ignores
    (`key_ignores`), so the YAML restating a default or not never changes a key. A config that cannot be
    built (validation names it) is keyed by its resolved values."""
    if not isinstance(method, dict) or not isinstance(method.get("config"), dict):
        return method
    try:
        config = build_method(method["config"])
    except Exception:
        return method
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in config.key_ignores()}
    target = f"{type(config).__module__}.{type(config).__qualname__}"
    return {"name": method.get("name"), "config": {"_target_": target, **fields}}


def digest(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def config_digest(material: dict) -> str:
    """The key without the code: equal for the same configuration run by different code."""
    return digest({k: v for k, v in material.items() if k != "code"})


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def readable_prefix(overrides: list[str], exclude: list[str], max_len: int = 80) -> str:
    """A short human-readable label from the command-line overrides: no secrets, no path separators."""
    parts = []
    for item in sorted(overrides):
        key, sep, value = item.partition("=")
        bare = key.lstrip("+~")
        if not sep or bare in exclude or is_secret(bare.rsplit(".", 1)[-1]):
            continue
        if "/" in value or "\\" in value:
            value = Path(value).name  # a path: its file name is enough for a label, the key holds the content
        parts.append(f"{bare.rsplit('.', 1)[-1]}={value}")
    label = _UNSAFE.sub("_", ",".join(parts))[:max_len].strip("_,")
    return label or "default"


def plain(root, key: str):
    """`root[key]` as plain values, resolved; unresolved where a resolver refuses it (a calibration made at another
    guidance scale): the folder is then named by what was asked, and validation names the problem in one line."""
    from omegaconf import OmegaConf

    node = root._get_node(key)
    if not OmegaConf.is_config(node):
        try:
            return root[key]
        except Exception:
            return node._value()
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:
        return OmegaConf.to_container(node, resolve=False)


def run_id(root) -> str:
    """`<prefix>-<key[:12]>` for the run directory (Hydra resolver `${run_id:}`)."""
    from omegaconf import OmegaConf

    cfg = {k: plain(root, k) for k in root if k != "hydra"}
    hydra = root.get("hydra")
    overrides = list(OmegaConf.select(hydra, "overrides.task", default=None) or []) if hydra is not None else []
    exclude = list(OmegaConf.select(hydra, "job.config.override_dirname.exclude_keys", default=None) or []) \
        if hydra is not None else []
    return f"{readable_prefix(overrides, exclude)}-{digest(key_material(cfg))[:12]}"
