"""Devices and dtypes of a run: `device=auto` resolved, a device this machine lacks named before any
model loads, and the run's dtype (the model's own on accelerators, float32 on the CPU)."""

from __future__ import annotations

import torch

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
