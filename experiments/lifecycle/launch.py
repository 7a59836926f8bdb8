"""A run as `python run.py <overrides>` makes it: in this process (`run`, for tests and notebooks), and the
body of run.py's Hydra job (`job`: what a user sees when a run is invalid, fails or is interrupted)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from ..base.config_files import CONF, ConfigError, Unavailable
from ..base.files import remove_stub
from ..run.keys import run_id
from . import resolvers  # noqa: F401  (registers the config resolvers)
from .runs import duration, print_table, run_task, scrub_run

log = logging.getLogger("run")

INTERRUPTED = 130  # the exit status of a process stopped by Ctrl-C (128 + SIGINT)


def run(*overrides: str, conf: Path = CONF) -> tuple[Path, dict]:
    """Composes the config from `overrides` and runs its task in the folder Hydra would use,
    `output_root/runs/<name>/<run_id>`: (run folder, metrics). Validation errors raise ConfigError."""
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    run_dir = Path(cfg.output_root) / "runs" / cfg.name / run_id(cfg)  # the id reads hydra's overrides
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to a task
    return run_dir, run_task(cfg, run_dir)


def job(cfg: DictConfig, run_dir: Path, multirun: bool, cell: int | None = None, new_root: bool = False) -> dict:
    """run.py's Hydra job: runs the task in `run_dir` and says once what happened.

    A single run prints its table and folder; an invalid one prints its error once and exits 2, leaving no
    folder behind (nor `output_root` when this run created it: `new_root`). A sweep cell records an invalid
    configuration or a failure in its status.json and the sweep goes on. Ctrl-C stops the run or the sweep
    with a line saying where it stopped and how to resume, and exit status 130.
    """
    started = time.monotonic()
    try:
        # run_task scrubs secrets from the run folder; a sweep cell records the error
        metrics = run_task(cfg, run_dir, record_invalid=multirun)
    except ConfigError as err:
        if not multirun:
            scrub_run(cfg, run_dir)
            root = Path(cfg.output_root)
            remove_stub(run_dir, root if new_root else root / "runs")
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        log.error("invalid configuration: %s", err)
        scrub_run(cfg, run_dir)  # this line reached run.log after the task's own scrub
        return {"status": "failed"}
    except KeyboardInterrupt:
        where = f"sweep cell {cell + 1} ({run_dir.name}) of {run_dir.parent}" if multirun and cell is not None \
            else f"run {run_dir}"
        print(f"interrupted: {where} was stopped; rerun the same command to resume (finished "
              f"{'cells are skipped and this cell' if multirun else 'images and batches are kept and it'} goes on "
              "where it stopped)", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Unavailable as err:  # weights or prompts not here and not fetchable now: how to get them, once
        scrub_run(cfg, run_dir)
        if not multirun:
            print(f"error: {err}\n(the run's record, with the traceback: {run_dir / 'status.json'})", file=sys.stderr)
            sys.exit(1)
        log.error("cell %s failed: %s", run_dir.name, err)
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
        print(f"results: {run_dir} (took {duration(time.monotonic() - started)})")
    return metrics
