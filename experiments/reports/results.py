"""Reading result directories back: runs (metrics.json, config.yaml, status.json, run_key.json) and
the settings that tell one run from another."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
import yaml

from ..base.devices import pick_dtype
from ..base.files import read_json
from ..base.methods import knob_of

log = logging.getLogger(__name__)

# What tells apart two runs of the same model, data, steps and method (see run_settings); a table
# shows each only where it varies among its rows.
SETTINGS = ("task", "prompt_set", "seed", "guidance", "batch_size", "resolution", "dtype", "device", "code",
            "stale_code")
HEX = frozenset("0123456789abcdef")


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (one holding metrics.json) under root."""
    return sorted(p.parent for p in Path(root).rglob("metrics.json"))


def _config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def run_settings(run_dir: Path) -> dict:
    """The run's SETTINGS and its `run_key`, from what the run recorded (a missing file or field gives None):

    - prompt_set: `<data name>:<first 8 hex of the SHA-256 of the prompt list>` (its content, not its
      path; a run that recorded no digest shows the prompt file's name instead);
    - seed, batch_size, device (the device type the run used), task;
    - guidance, resolution (`<height>x<width>`): the pipeline call's, `model.call_kwargs` included;
    - dtype: the effective one (`auto` resolved as the run resolved it, from the model's dtype and the
      run's device type);
    - code: first 8 hex of the SHA-256 of the code that made the results; stale_code: whether they were
      reused from a run made by other code;
    - run_key: first 12 hex of the run key (as in the run folder's name).
    """
    cfg, recorded = _config(run_dir), _dict(read_json(run_dir / "run_key.json"))
    material, status = _dict(recorded.get("material")), _dict(read_json(run_dir / "status.json"))
    metrics, provenance = _dict(read_json(run_dir / "metrics.json")), _dict(recorded.get("provenance"))
    model = _dict(cfg.get("model")) or _dict(material.get("model"))
    call = {**model, **_dict(model.get("call_kwargs"))}
    data, recorded_data = _dict(cfg.get("data")), _dict(material.get("data"))
    name = recorded_data.get("name") or data.get("name")
    digest = str(recorded_data.get("prompts_sha256") or "")
    if len(digest) == 64 and set(digest) <= HEX:
        prompt_set = f"{name}:{digest[:8]}"
    else:
        prompt_set = f"{name}:{Path(data['path']).name}" if data.get("path") else name
    height, width = call.get("height"), call.get("width")
    device = material.get("device") or cfg.get("device")
    code = _dict(material.get("code")).get("sha256")
    key = recorded.get("key")
    return {
        "task": cfg.get("task") or material.get("task"),
        "prompt_set": prompt_set,
        "seed": material.get("seed", cfg.get("seed")),
        "guidance": call.get("guidance_scale"),
        "batch_size": material.get("batch_size", cfg.get("batch_size")),
        "resolution": f"{height}x{width}" if height and width else None,
        "dtype": _effective_dtype(metrics.get("dtype") or provenance.get("dtype") or material.get("dtype")
                                  or cfg.get("dtype"), model.get("dtype"), device),
        "device": device,
        "code": code[:8] if isinstance(code, str) else None,
        "stale_code": bool(recorded.get("reused_code_from") or status.get("reused_code_from")),
        "run_key": key[:12] if isinstance(key, str) else None,
    }


def _effective_dtype(name, model_dtype, device):
    """`auto` resolved as the run resolved it (`experiments.base.devices.pick_dtype`), where the record says enough."""
    if name != "auto" or device not in ("cpu", "cuda", "mps"):
        return name
    try:
        return str(pick_dtype(name, model_dtype, torch.device(device))).removeprefix("torch.")
    except KeyError:  # no model dtype recorded
        return name


def _text(value) -> str:
    """A cell as text for comparing rows: None and NaN are equal to each other and to nothing else."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def distinct(frame: pd.DataFrame, keys: list[str], label: str) -> pd.DataFrame:
    """`frame` with the columns that tell its rows apart and one row per run.

    `keys` are the columns always shown; each of SETTINGS is kept only where it varies among the rows
    that recorded settings (`stale_code` wherever a row is stale). Rows equal on every key, setting and
    run key are the same run found twice (e.g. a copied output root): the first is kept and a log line
    names both by their `label` column. Rows that still tie on every key and setting are different runs
    (their keys differ in something no column shows): the `run_key` column tells them apart.
    """
    settings = [c for c in SETTINGS if c in frame and c not in keys]
    ident = [c for c in keys if c in frame] + settings
    if frame.empty or not ident:
        return frame
    text = frame.map(_text)
    name = (lambda i: frame.at[i, label]) if label in frame else (lambda i: i)
    rest = [c for c in frame.columns if c not in ident and c not in (label, "run_key")]
    copies = []
    for rows in text.groupby(ident + [c for c in ("run_key",) if c in frame], sort=False).indices.values():
        first, *others = frame.index[rows]
        for i in others:
            differ = " (their metrics differ)" if (text.loc[i, rest] != text.loc[first, rest]).any() else ""
            log.warning("the same run twice (equal settings and run key)%s: keeping %s, leaving out %s",
                        differ, name(first), name(i))
        copies += others
    frame, text = frame.drop(index=copies), text.drop(index=copies)
    recorded = frame[[c for c in settings if c != "stale_code"]].notna().any(axis=1)
    drop = [c for c in settings if (not frame[c].eq(True).any() if c == "stale_code"
                                    else frame.loc[recorded, c].nunique(dropna=False) <= 1)]
    if "run_key" in frame and not text[ident].duplicated(keep=False).any():
        drop.append("run_key")
    return frame.drop(columns=drop)


CONFIG = "method.config."  # columns of the method's config fields (as in a sweep's overrides)


def load_run(run_dir: Path) -> dict:
    """A flat row: the run's model, data, method, steps, knob and its value, every field of the method's
    config (`method.config.<field>`), the settings, and its metrics."""
    cfg = _config(run_dir)
    method = cfg.get("method") or {}
    knob, value = knob_of(method)
    fields = {f"{CONFIG}{k}": v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
              for k, v in (method.get("config") or {}).items() if not k.startswith("_")}
    row = {
        "run": str(run_dir),
        "model": (cfg.get("model") or {}).get("name"),
        "data": (cfg.get("data") or {}).get("name"),
        "steps": (cfg.get("model") or {}).get("steps"),
        "method": method.get("name"),
        "knob": knob,
        "knob_value": value,
        **fields,
        **run_settings(run_dir),
        # sweep cells live in outputs/sweeps/<sweep>-<model>/<cell>/
        "sweep": run_dir.parent.name if run_dir.parent.parent.name == "sweeps" else None,
    }
    status = run_dir / "status.json"
    row["status"] = (read_json(status) or {}).get("status") if status.exists() else None
    row.update(read_json(run_dir / "metrics.json") or {})
    return row


def varying_fields(runs: pd.DataFrame) -> list[str]:
    """The method-config columns whose values differ among the rows (a method's setting is shown where it varies)."""
    return [c for c in runs.columns if c.startswith(CONFIG) and runs[c].map(_text).nunique() > 1]


def load_runs(root: str | Path) -> pd.DataFrame:
    return pd.DataFrame([load_run(p) for p in find_runs(root)])
