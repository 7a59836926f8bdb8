"""Run one experiment (or a sweep) from the Hydra config in conf/.

    python run.py                                  # the embedded default: tiny model, full vs CAT
    python run.py model=sd3_medium data=parti      # a real checkpoint (GPU, hub access)
    python run.py task=macs model=sd3_medium       # MACs from the model config alone, no weights
    python run.py sweep=ablation                   # the ablation grid (a multirun, no -m needed)
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import resolvers  # noqa: F401  (registers the config resolvers)
from experiments.tasks import print_table, run_task

log = logging.getLogger("run")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = run_task(cfg, run_dir)
    except Exception as err:
        if not multirun:
            raise
        # One failing sweep cell must not lose the others: its status.json records the error.
        log.error("cell %s failed: %s: %s", run_dir.name, type(err).__name__, err)
        return {"status": "failed"}
    if not multirun:
        print(print_table(metrics))
        print(f"results: {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
