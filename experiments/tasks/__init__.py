"""The tasks `run.py` dispatches to (`registry.TASKS`), each `(cfg, run_dir, method config) -> flat metrics`
with its own validation: `generate` (the full model's and the method's images, then evaluation), `macs`
(MACs counted offline), `latency` (timing only) and `compare` (one method in one variant of the fair
comparison). `validation` holds the checks every task shares; the run lifecycle around them (the run key,
locks, reuse) is `experiments.lifecycle.runs`.

Every module of this package is imported here, so a task's `register(Task(...))` runs when the package is
imported: adding a task is adding its file. Imports only the layers below it.
"""

import importlib
import pkgutil

from .registry import TASKS, Task, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "register"]
