"""Writing results: atomic JSON files, per-image records, and Weights & Biases (offline by default)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SECRET = re.compile(r"(token|secret|password|api[_-]?key|wandb_key)", re.I)


def write_json(path: Path, data) -> None:
    """Writes JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def write_lines(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in rows))
    os.replace(tmp, path)


def scrub(obj):
    """A copy of a config without anything that looks like a secret."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


class WandbSink:
    """Logs a run to W&B; `mode` offline (default: no account, `wandb sync` later), online or disabled."""

    def __init__(self, project: str, mode: str, group: str | None, name: str, config: dict, directory: Path):
        import wandb

        self.wandb = wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, mode=os.environ.get("WANDB_MODE", mode), group=group, name=name,
                              config=scrub(config), dir=str(directory), reinit="finish_previous")

    def log(self, metrics: dict, images: dict[str, Path] | None = None) -> None:
        data = dict(metrics)
        for key, path in (images or {}).items():
            if Path(path).exists():
                data[key] = self.wandb.Image(str(path))
        self.run.log(data)
        for k, v in metrics.items():
            self.run.summary[k] = v

    def table(self, key: str, frame) -> None:
        self.run.log({key: self.wandb.Table(dataframe=frame)})

    def finish(self) -> None:
        self.run.finish()


def make_sink(logger_cfg: dict, name: str, group: str | None, config: dict, directory: Path):
    if not logger_cfg or logger_cfg.get("name") in (None, "none"):
        return None
    return WandbSink(logger_cfg.get("project", "cat-pruning"), logger_cfg.get("mode", "offline"), group, name,
                     config, directory)
