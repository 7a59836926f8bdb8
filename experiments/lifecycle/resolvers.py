"""How conf/ reaches the library: OmegaConf resolvers, and every method config's fields as config nodes.

`method_fields/<name>` (registered here from `cat.METHODS`, in Hydra's ConfigStore): every field of a
method's config class with its dataclass default. A conf/method file lists it first in its defaults, so
`method.config.<any field>=...` works on the command line and in sweep files while the file itself
holds only its knob, its levels and what differs from the defaults.

`level`: a method's knob value: `method.levels[level]` when `level` is set (sweep=peers), else the
config's default for the knob (step-dependent ones from `for_steps`).
`for_steps`: a step-dependent default of the method's config class at `model.steps` (its `for_steps`:
e.g. CAT's warm-up, the authors' share of 8 full steps of 28).
`calibrated`: a field a method's calibration measured for this model, step count and guidance scale
(`assets/<method>/<model>-<steps>.json`, written by scripts/calibrate.py), or null when not calibrated at this
step count; one made at another guidance scale is refused unless `method.calibration` asks for it.
`peers`: the methods `sweep=peers` visits: every registered method, then the extra conf/method files named.
`run_id`: the run directory's name, a readable prefix plus the hash of everything that changes the
run's output (experiments/run/keys.py).
`task_help`: a line per registered task (experiments/tasks), for `python run.py --help`.
`config_groups`: the config groups a user chooses from (conf/'s folders, not Hydra's own nor the internal
`method_fields`), each with its options, for `python run.py --help`.
"""

from __future__ import annotations

import dataclasses
import json

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import OmegaConf

import cat

from ..base.config_files import CONF, ROOT, calibration_file, calibration_source
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


def steps_share(share, *, _root_) -> int:
    """`share` of the model's step count, rounded, at least 1: a tuning grid's step count that holds on every
    model (`forecast_steps: [null, "${steps_share:0.1}"]` is 2 of PixArt's 20 steps and 3 of SD3's 28)."""
    share = float(share)
    if not 0 < share <= 1:
        raise ValueError(f"steps_share:{share} is invalid; allowed: a share of the model's steps in (0, 1]")
    return max(1, round(share * int(_root_.model.steps)))


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
    """`field` of the method's calibration for this model, step count and guidance scale, or None when there is
    none for this step count (the method's `missing_calibration` then stops the run). A calibration made at another
    guidance scale is refused; `method.calibration.steps` / `method.calibration.guidance_scale` ask explicitly for
    one made at another step count (which the method then stretches or reuses) or guidance scale;
    `method.calibration.of` reads the calibration of another method name of the same config class (an ablation
    arm renamed on the command line or in a sweep file reads its method's)."""
    wanted = OmegaConf.select(_root_, "method.calibration", default=None) or {}
    owner, steps = calibration_source(_root_)
    path = calibration_file(owner, _root_.model.name, steps)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    accepted = wanted.get("guidance_scale")
    guidance = _root_.model.guidance_scale if accepted is None else accepted
    made_at = stored.get("guidance_scale")
    if made_at is not None and float(made_at) != float(guidance):
        raise ValueError(
            f"{path.relative_to(ROOT)} was calibrated at guidance_scale={made_at}, this run uses model.guidance_scale="
            f"{_root_.model.guidance_scale}: calibrate at this guidance scale (python scripts/calibrate.py "
            f"method={owner} model={_root_.model.name} model.steps={steps} model.guidance_scale="
            f"{_root_.model.guidance_scale}) or reuse it explicitly with method.calibration.guidance_scale={made_at}")
    return stored[field]


def config_groups() -> str:
    """`group: option, option, ...`, one line per folder of conf/ (not hydra/: Hydra's --hydra-help lists those)."""
    lines = []
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            lines.append(f"{folder.name}: {', '.join(options)}")
    return "\n".join(lines)


def peers(*extra: str) -> str:
    return ",".join([*cat.METHODS, *extra])


register_method_fields()
OmegaConf.register_new_resolver("level", level, replace=True)
OmegaConf.register_new_resolver("for_steps", for_steps, replace=True)
OmegaConf.register_new_resolver("steps_share", steps_share, replace=True)
OmegaConf.register_new_resolver("calibrated", calibrated, replace=True)
OmegaConf.register_new_resolver("peers", peers, replace=True)
OmegaConf.register_new_resolver("run_id", lambda *, _root_: run_id(_root_), replace=True)
OmegaConf.register_new_resolver("task_help", lambda: help_lines(), replace=True)
OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)
