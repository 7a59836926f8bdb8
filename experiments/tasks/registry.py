"""The task registry: what `python run.py task=<name>` does with a validated config.

A task is one module of `experiments/tasks/` that registers a `Task` (every module of the package is
imported with it): its name, a line for `python run.py --help`, the function that runs it, and its own
validation, called after the checks every task shares (the model, the method) and before any model
loads. `task=` accepts exactly the registered names; `--help` lists them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig


@dataclass(frozen=True)
class Task:
    """Attributes:
        name: the value of `task=`.
        help: one line for `python run.py --help`.
        run: (cfg, run folder, the method's config or None for the full model) -> flat metrics (metrics.json),
            or None in a process of a distributed launch that does not write results.
        check: (cfg, the method's config or None) -> None; raises ConfigError (one line: the setting, its
            value, what is allowed) for a setting this task cannot run, before any model loads.
        retime: (cfg, run folder, the method's config, the finished run's metrics) -> its metrics with the
            timing measured again (`metrics.latency.retime=true`), for a task whose results include a timing.
    """

    name: str
    help: str
    run: Callable[[DictConfig, Path, object], dict | None]
    check: Callable[[DictConfig, object], None]
    retime: Callable[[DictConfig, Path, object, dict], dict] | None = None


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def help_lines(indent: int = 2) -> str:
    """`task=<name>  <help>`, one line per registered task (the `${task_help:}` of conf/hydra/help)."""
    width = max(len(name) for name in TASKS) + len("task=") + 2
    return "\n".join(" " * indent + f"task={t.name}".ljust(width) + t.help for t in TASKS.values())
