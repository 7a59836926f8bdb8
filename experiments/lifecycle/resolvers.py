"""How conf/ reaches the library: OmegaConf resolvers, and every method config's fields as config nodes.

`method_fields/<name>` (registered here from `cat.METHODS`, in Hydra's ConfigStore): every field of a
method's config class with its dataclass default. A conf/method file lists it first in its defaults, so
`method.config.<any field>=...` works on the command line and in sweep files while the file itself
holds only its knob, its levels and what differs from the defaults.

`level`: a method's knob value: `method.levels[level]` when `level` is set (sweep=peers), else the
config's default for the knob (step-dependent ones from `for_steps`).
`for_steps`: a step-dependent default of the method's config class at `model.steps` (its `for_steps`:
e.g. CAT's warm-up, the authors' share of 8 full steps of 28).
`calibrated`: a field a method's calibration measured for this model and step count
(`assets/<method>/<model>-<steps>.json`, written by scripts/calibrate.py), or null when not calibrated.
`peers`: the methods `sweep=peers` visits: every registered method, then the extra conf/method files named.
`run_id`: the run directory's name, a readable prefix plus the hash of everything that changes the
run's output (experiments/run/keys.py).
`task_help`: a line per registered task (experiments/tasks), for `python run.py --help`.
"""

from __future__ import annotations

import dataclasses
import json

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import OmegaConf

import cat

from ..base.config_files import calibration_file
from ..run.keys import run_id
from ..tasks.registry import help_lines

FIELDS_GROUP = "method_fields"


def field_defaults(config_cls) -> dict:
    """Every field of a config dataclass with its default, as plain config values (tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def register_method_fields() -> None:
    store = ConfigStore.instance()
    for name, config_cls in cat.METHODS.items():
        store.store(group=FIELDS_GROUP, name=name, node=field_defaults(config_cls))


def _config_class(root):
    return get_class(root.method.config._target_)


def for_steps(field: str, *, _root_):
    return _config_class(_root_).for_steps(int(_root_.model.steps))[field]


def level(*, _root_):
    """`method.levels[level]`, or the default of the knob (`for_steps`, else the dataclass field's)."""
    method, chosen = _root_.method, _root_.level
    if chosen is None:
        cls = _config_class(_root_)
        defaults = {**field_defaults(cls), **cls.for_steps(int(_root_.model.steps))}
        return defaults[method.knob]
    levels = list(method.levels)
    if not isinstance(chosen, int) or not 0 <= chosen < len(levels):
        raise ValueError(f"level={chosen!r} is invalid; allowed: null or 0..{len(levels) - 1} (levels {levels})")
    return levels[chosen]


def calibrated(field: str, *, _root_):
    path = calibration_file(_root_.method.name, _root_.model.name, _root_.model.steps)
    return json.loads(path.read_text())[field] if path.exists() else None


def peers(*extra: str) -> str:
    return ",".join([*cat.METHODS, *extra])


register_method_fields()
OmegaConf.register_new_resolver("level", level, replace=True)
OmegaConf.register_new_resolver("for_steps", for_steps, replace=True)
OmegaConf.register_new_resolver("calibrated", calibrated, replace=True)
OmegaConf.register_new_resolver("peers", peers, replace=True)
OmegaConf.register_new_resolver("run_id", lambda *, _root_: run_id(_root_), replace=True)
OmegaConf.register_new_resolver("task_help", lambda: help_lines(), replace=True)
