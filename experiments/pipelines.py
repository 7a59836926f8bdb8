"""Loading diffusers pipelines from a model config: hub id or local folder, safetensors only."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import sys

import torch

from .config_files import resolve
from .identity import COMMIT, model_snapshot

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(name: str) -> None:
    """Raises a one-line error for a device this machine does not have (before any model loads)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={name!r} is invalid ({err}); allowed: auto, cpu, cuda, cuda:<n>, mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but this torch has no CUDA device "
                             f"(torch {torch.__version__}); use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} but MPS is not available; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is invalid; allowed: auto, cpu, cuda, cuda:<n>, mps")


def resolved_device_type(name: str = "auto") -> str:
    """The device type a run will use ('cpu', 'cuda', 'mps'), or the name itself if it is invalid."""
    try:
        return pick_device(name).type
    except (RuntimeError, TypeError):
        return str(name)


def pick_dtype(name: str, model_dtype: str, device: torch.device) -> torch.dtype:
    """The run's dtype: the model's own on accelerators, float32 on the CPU (half precision is slow there)."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype={name!r} is invalid; allowed: auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    return torch.float32 if device.type == "cpu" else DTYPES[model_dtype]


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
        raise RuntimeError(
            f"could not load {model_cfg['name']!r} from {source!r}: {err}\n"
            f"Fetch it once with network access: `huggingface-cli download {model_cfg['repo']}` "
            "(gated models need `huggingface-cli login` or the HF_TOKEN environment variable), "
            "or point model.local_path at a downloaded copy."
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
