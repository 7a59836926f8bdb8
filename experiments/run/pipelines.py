"""Loading diffusers pipelines from a model config: hub id (at the commit the run is keyed by) or local folder,
safetensors only; the scheduler the config asks for; prompt-truncation warnings once; the transformer's
blocks compiled for a context."""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import logging
import os
import re
import sys
from pathlib import Path

import torch

import cat

from ..base.config_files import Unavailable, resolve

COMMIT = re.compile(r"[0-9a-f]{40}")

_LOADED: dict[str, object] = {}


def load_pipeline(model_cfg: dict, device: torch.device, dtype: torch.dtype):
    """The model's pipeline on `device`, loaded once per process (sweep cells in one process share it;
    CAT's patch is removed exactly after each use, so sharing is safe). Its prompt-truncation warning
    is shown once per cut text, shortened (`TruncationOnce`)."""
    import json

    key = json.dumps([model_cfg, str(device), str(dtype)], sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED.clear()  # keep one model in memory
        _LOADED[key] = with_scheduler(_load(model_cfg, device, dtype), model_cfg.get("scheduler") or {})
    quiet_truncation(_LOADED[key])
    return _LOADED[key]


def with_scheduler(pipe, overrides: dict):
    """The pipeline with its scheduler rebuilt from its own config plus `model.scheduler` (e.g. `shift`
    of SD3's flow-matching sampler); unchanged without overrides."""
    if overrides:
        scheduler = pipe.scheduler
        unknown = sorted(set(overrides) - set(scheduler.config))
        if unknown:
            raise ValueError(f"model.scheduler: {', '.join(unknown)} is not a setting of {type(scheduler).__name__}; "
                             f"allowed: {', '.join(sorted(k for k in scheduler.config if not k.startswith('_')))}")
        pipe.scheduler = type(scheduler).from_config(scheduler.config, **overrides)
    return pipe


_TRUNCATED = re.compile(r"The following part of your input was truncated because (?P<why>.+?) tokens: (?P<cut>.*)",
                        re.S)
_SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>|<pad>|<unk>")  # padding of the batch's shorter prompts


class TruncationOnce(logging.Filter):
    """diffusers' warning that a text encoder truncated the prompt, once per cut text and short.

    The pipelines log the whole cut part of every prompt of the batch (the shorter ones as padding
    tokens) at every call, once per text encoder: a run calls the pipeline for the full model, the
    method, the MACs count and the latency timing. This lets the first sighting of each cut text
    through as one line: why, how many words were cut (the record holds the decoded text only, not
    the token ids), and its first `chars` characters.
    """

    def __init__(self, chars: int = 60):
        super().__init__()
        self.chars = chars
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = _TRUNCATED.match(record.getMessage())
        if match is None:
            return True
        why = " ".join(match["why"].split())
        new = [cut for cut in dict.fromkeys(_cut_texts(match["cut"])) if (why, cut) not in self.seen]
        if not new:
            return False
        self.seen.update((why, cut) for cut in new)
        record.msg, record.args = f"prompt truncated ({why} tokens): " + "; ".join(map(self._short, new)), ()
        return True

    def _short(self, cut: str) -> str:
        head = cut if len(cut) <= self.chars else cut[: self.chars].rstrip() + "..."
        return f"{len(cut.split())} words cut, {head!r}"


def _cut_texts(text: str) -> list[str]:
    """The non-empty cut texts of a warning's tail: the repr of one decoded string per prompt."""
    try:
        texts = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        texts = text
    texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    return [cut for t in texts if (cut := " ".join(_SPECIAL.sub(" ", t).split()))]


def pipeline_loggers(pipe) -> list[logging.Logger]:
    """The module loggers of the pipeline's classes (diffusers logs from the module that defines the code)."""
    found = {}
    for cls in type(pipe).__mro__:
        logger = getattr(sys.modules.get(cls.__module__), "logger", None)
        if cls.__module__.startswith("diffusers.pipelines.") and isinstance(logger, logging.Logger):
            found[logger.name] = logger
    return list(found.values())


def quiet_truncation(pipe) -> None:
    """Puts a `TruncationOnce` filter (one per logger, kept across loads) on the pipeline's loggers."""
    for logger in pipeline_loggers(pipe):
        if not any(isinstance(f, TruncationOnce) for f in logger.filters):
            logger.addFilter(TruncationOnce())


def _load(model_cfg: dict, device: torch.device, dtype: torch.dtype):
    """Built in memory, from a local folder, or from the hub."""
    if model_cfg.get("builder"):
        module, _, fn = model_cfg["builder"].rpartition(".")
        pipe = getattr(importlib.import_module(module), fn)()
        return pipe.to(device=device, dtype=dtype)
    import diffusers

    cls = getattr(diffusers, model_cfg["pipeline"])
    source = model_cfg.get("local_path")
    if source:
        path = resolve(source)
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"model {model_cfg['name']!r} not found at {path}. For the embedded default run "
                f"`python scripts/train_tiny.py --out {source}`; for a hub model set model.local_path=null."
            )
        source, local = str(path), True
    else:
        source, local = model_cfg["repo"], os.environ.get("HF_HUB_OFFLINE") == "1"
    kwargs = dict(model_cfg.get("load_kwargs") or {})
    if not model_cfg.get("local_path"):  # exactly the commit the run is keyed by
        commit = model_snapshot(model_cfg) or ""
        kwargs["revision"] = commit if COMMIT.fullmatch(commit) else (model_cfg.get("revision") or "main")
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, local_files_only=local, **kwargs)
    except OSError as err:
        raise Unavailable(
            f"could not load {model_cfg['name']!r} from {source!r}: {err}\n"
            f"Fetch it once with network access: `huggingface-cli download {model_cfg['repo']}` "
            "(gated models need `huggingface-cli login` or the HF_TOKEN environment variable), "
            "or point model.local_path at a downloaded copy."
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@functools.lru_cache(maxsize=16)
def hub_commit(repo: str, revision: str | None = None, cache_dir: str | None = None, token: str | None = None) -> str:
    """The commit a hub model's revision (branch, tag or commit) stands for, once per process: asked of
    the hub when online (what `from_pretrained` would download), else read from the local hub cache
    (what an offline `from_pretrained` would load). `unresolved:<revision>` when neither can say (not
    downloaded yet and no network); such a run is keyed apart from runs of any resolved commit."""
    revision = revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    import huggingface_hub

    if os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            sha = huggingface_hub.model_info(repo, revision=revision, timeout=10, token=token).sha
            if sha:
                return sha
        except Exception:  # no network, gated without a token, ...: fall back to the cache
            pass
    cached = huggingface_hub.try_to_load_from_cache(repo, "model_index.json", cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str) and COMMIT.fullmatch(Path(cached).parent.name):
        return Path(cached).parent.name
    return f"unresolved:{revision}"


def model_snapshot(model: dict) -> str | None:
    """The commit a hub model's config loads (None for local and built-in models)."""
    if model.get("local_path") or model.get("builder") or not model.get("repo"):
        return None
    load = model.get("load_kwargs") or {}
    cache_dir, token = load.get("cache_dir"), load.get("token")
    return hub_commit(model["repo"], model.get("revision"), str(cache_dir) if cache_dir else None,
                      token if isinstance(token, str) else None)


def compiled_blocks(transformer, enabled: bool, mode: str = "default"):
    """A context in which the transformer's blocks are compiled (nothing when not enabled)."""

    @contextlib.contextmanager
    def ctx():
        if not enabled:
            yield
            return
        cat.check_compile(mode, next(transformer.parameters()).device)
        undo = cat.compile_blocks(transformer, mode)  # the same blocks, compiled the same way, as the method's
        try:
            yield
        finally:
            for fn in reversed(undo):
                fn()

    return ctx()
