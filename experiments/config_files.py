"""Paths of the project and plain access to its config files (for the CLIs that run without Hydra)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def resolve(path: str | Path) -> Path:
    """A path from a config: absolute, or relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def default_setting(key: str):
    """A top-level setting of conf/config.yaml as configured there (e.g. `paired_reference`)."""
    from omegaconf import OmegaConf

    return OmegaConf.load(CONF / "config.yaml").get(key)


def model_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def load_model_config(name: str) -> dict:
    """conf/model/<name>.yaml as a plain dict, with the transformer config read from its file if given."""
    from omegaconf import OmegaConf

    path = CONF / "model" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(model_names())}")
    return transformer_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def transformer_config(model_cfg: dict) -> dict:
    """Fills `transformer.config` from `transformer.config_file` (a shipped model's config.json)."""
    arch = dict(model_cfg["transformer"])
    if "config" not in arch or arch["config"] is None:
        file = resolve(arch["config_file"])
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing: the model {model_cfg['name']!r} is not installed")
        arch["config"] = {k: v for k, v in json.loads(file.read_text()).items() if not k.startswith("_")}
    return {**model_cfg, "transformer": arch}
