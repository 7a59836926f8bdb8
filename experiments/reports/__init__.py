"""Reports from saved results: reading run folders back (`results`), a sweep's tables (`sweeps`) and its
registered reports (`targets`: the fair comparison; `paired` and `contrast`: paired differences; `levels`:
a level sweep's Pareto report), figures, and the run's logger (`loggers`: W&B).

Every module of this package is imported here, so a sweep report's `@sweep_report` runs when the package is
imported: adding a sweep report is adding its file. Imports only the layers below it (base, prompts,
metrics, run, compare).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
