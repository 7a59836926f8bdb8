"""Model configs of conf/model/: read without Hydra, the transformer config filled from a shipped model's
file, and the token geometry at the configured resolution."""

from __future__ import annotations

import json

from cat.families import family_of_class

from .config_files import CONF, resolve


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


def token_geometry(model: dict) -> tuple[int, int, int]:
    """(patch in pixels, token rows, token columns) of a model config at its resolution."""
    arch = transformer_config(model)["transformer"]
    family = family_of_class(arch["class"])
    vae_scale = int(((model.get("macs") or {}).get("vae_scale")) or 8)
    patch = family.token_patch(arch["config"]) if family else int(arch["config"].get("patch_size") or 1)
    pixels = vae_scale * patch
    return pixels, int(model["height"]) // pixels, int(model["width"]) // pixels
