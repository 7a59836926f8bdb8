"""Run one experiment (or a sweep) from the Hydra config in conf/.

    python run.py                                  # the embedded default: tiny model, full vs CAT
    python run.py model=sd3_medium data=parti      # a real checkpoint (GPU, hub access)
    python run.py task=macs model=sd3_medium       # MACs from the model config alone, no weights
    python run.py sweep=ablation                   # the ablation grid (a multirun, no -m needed)
    python run.py --help                           # the groups and main options
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.base.config_files import ConfigError
from experiments.lifecycle import launch
from experiments.lifecycle.command_line import check as check_command_line

NEW_ROOT = False  # whether this process creates output_root (a run refused before starting removes it again)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    logging.captureWarnings(True)  # a library's warning (e.g. a budget not met) reaches run.log, not only stderr
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return launch.job(cfg, Path(hydra_cfg.runtime.output_dir), multirun, hydra_cfg.job.get("num"), NEW_ROOT)


if __name__ == "__main__":
    try:
        root = check_command_line(sys.argv[1:])  # before Hydra creates any folder
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(launch.INTERRUPTED)
    NEW_ROOT = root is not None and not root.exists()
    try:
        main()
    except KeyboardInterrupt:  # between a sweep's cells, or before a run began
        print("interrupted; rerun the same command to resume (finished runs and sweep cells are skipped)",
              file=sys.stderr)
        sys.exit(launch.INTERRUPTED)
