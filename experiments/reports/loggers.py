"""The run's logger (conf/logger/): Weights & Biases, offline by default (no account needed; `wandb sync`
later), or none."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from ..base.secrets import scrub


class WandbSink:
    """Logs a run to W&B; `mode` offline (default: no account, `wandb sync` later), online or disabled."""

    def __init__(self, project: str, mode: str, group: str | None, name: str, config: dict, directory: Path):
        import wandb

        self.wandb = wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, mode=os.environ.get("WANDB_MODE", mode), group=group, name=name,
                              config=scrub(config), dir=str(directory), reinit="finish_previous",
                              # no command line, code or host metadata: overrides may hold secrets
                              settings=wandb.Settings(x_disable_meta=True, save_code=False, disable_code=True,
                                                      console="off"))

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


SINKS = {"wandb": WandbSink}  # conf/logger/<name>.yaml -> its sink (any other logger logs nothing)


def make_sink(logger_cfg: dict, name: str, group: str | None, config: dict, directory: Path):
    sink = SINKS.get((logger_cfg or {}).get("name"))
    if sink is None:
        return None
    return sink(logger_cfg.get("project", "cat-pruning"), logger_cfg.get("mode", "offline"), group, name, config,
                directory)


def log_run(cfg, run_dir: Path, metrics: dict) -> None:
    """Logs a run's metrics and figures to the configured sink (W&B), if any."""
    sink = make_sink(OmegaConf.to_container(cfg.logger, resolve=True), run_dir.name or cfg.name,
                     cfg.get("group"), OmegaConf.to_container(cfg, resolve=True), run_dir)
    if sink is None:
        return
    sink.log(metrics, {"grid": run_dir / "grid.png", "selection": run_dir / "selection.png"})
    sink.finish()
