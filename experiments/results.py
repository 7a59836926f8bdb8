"""Reading result directories back: runs (metrics.json, config.yaml, status.json) and sweeps (summary.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (one holding metrics.json) under root."""
    return sorted(p.parent for p in Path(root).rglob("metrics.json"))


def load_run(run_dir: Path) -> dict:
    """A flat row: the run's model, data, method, steps and key parameters, and its metrics."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    method = (cfg.get("method") or {})
    params = method.get("config") or {}
    knob = method.get("knob")
    row = {
        "run": str(run_dir),
        "model": (cfg.get("model") or {}).get("name"),
        "data": (cfg.get("data") or {}).get("name"),
        "steps": (cfg.get("model") or {}).get("steps"),
        "method": method.get("name"),
        # method-neutral: the field the method's sweep varies and its value; CAT's own fields follow
        "knob": knob,
        "knob_value": params.get(knob) if knob else None,
        "policy": params.get("policy"),
        "keep_ratio": params.get("keep_ratio"),
        "num_clusters": params.get("num_clusters"),
        "warmup_steps": params.get("warmup_steps"),
        "task": cfg.get("task"),
        # sweep cells live in outputs/sweeps/<sweep>-<model>/<cell>/
        "sweep": run_dir.parent.name if run_dir.parent.parent.name == "sweeps" else None,
    }
    status = run_dir / "status.json"
    row["status"] = json.loads(status.read_text()).get("status") if status.exists() else None
    from .sinks import read_json

    row.update(read_json(run_dir / "metrics.json") or {})
    return row


def load_runs(root: str | Path) -> pd.DataFrame:
    return pd.DataFrame([load_run(p) for p in find_runs(root)])
