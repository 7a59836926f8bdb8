"""Image metrics, each registered with the harness (`registry.py`: name, label, unit, direction, how it is
computed): prompt adherence (the bundled sets' judges), CLIP score, fidelity to the full model (PSNR, SSIM,
LPIPS), FID, ImageReward.

Every module of this package is imported here, so a metric's `register(Metric(...))` runs when the package
is imported: adding a metric is adding its file, with no list to edit. Most are also command-line tools
over folders: `python -m experiments.metrics.<name> --help`. Imports only `experiments.base` and
`experiments.prompts`.
"""

import importlib
import pkgutil

from .registry import METRICS, Metric, Scoring, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METRICS", "Metric", "Scoring", "register"]
