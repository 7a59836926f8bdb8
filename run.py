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
from experiments.base.files import remove_stub
from experiments.lifecycle import resolvers  # noqa: F401  (registers the config resolvers)
from experiments.lifecycle.command_line import check as check_command_line
from experiments.lifecycle.runs import print_table, run_task, scrub_run

log = logging.getLogger("run")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        # run_task scrubs secrets from the run folder; a single run that fails validation leaves no run
        # folder; a sweep cell records the error
        metrics = run_task(cfg, run_dir, record_invalid=multirun)
    except ConfigError as err:
        log.error("invalid configuration: %s", err)
        scrub_run(cfg, run_dir)  # this line reached run.log after the task's own scrub
        if not multirun:
            remove_stub(run_dir)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        return {"status": "failed"}
    except Exception as err:
        if not multirun:
            raise
        # One failing sweep cell must not lose the others: its status.json records the error.
        log.error("cell %s failed: %s: %s", run_dir.name, type(err).__name__, err)
        scrub_run(cfg, run_dir)
        return {"status": "failed"}
    if not multirun:
        print(print_table(metrics))
        print(f"results: {run_dir}")
    return metrics


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:])  # before Hydra creates any folder
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
