"""A run in this process, as `python run.py <overrides>` makes it (for tests and notebooks)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from ..base.config_files import CONF
from ..run.keys import run_id
from . import resolvers  # noqa: F401  (registers the config resolvers)
from .runs import run_task


def run(*overrides: str, conf: Path = CONF) -> tuple[Path, dict]:
    """Composes the config from `overrides` and runs its task in the folder Hydra would use,
    `output_root/runs/<name>/<run_id>`: (run folder, metrics). Validation errors raise ConfigError."""
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    run_dir = Path(cfg.output_root) / "runs" / cfg.name / run_id(cfg)  # the id reads hydra's overrides
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to a task
    return run_dir, run_task(cfg, run_dir)
