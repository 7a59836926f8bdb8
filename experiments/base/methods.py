"""Method configs of conf/method/: the config object a resolved `method.config` builds, and the knob a
method's file names."""

from __future__ import annotations

import functools
import json


def build_method(config: dict):
    """The config object a resolved `method.config` (with its `_target_`) builds; cached by content."""
    return _build(json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _build(config_json: str):
    from hydra.utils import instantiate

    return instantiate(json.loads(config_json))


def knob_of(method: dict | None) -> tuple[str | None, object]:
    """The field a method's sweep varies (`knob` in its conf file) and its value in this run's config."""
    method = method or {}
    knob = method.get("knob")
    return knob, ((method.get("config") or {}).get(knob) if knob else None)
