"""`task=macs`: the model's and the method's transformer MACs from the configs alone, on `meta` (no weights,
no images): for a method whose per-step token counts are known before it runs (`offline_schedule`)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ..base.config_files import ConfigError
from ..base.models import token_geometry, transformer_config
from ..run.macs import report_for_model
from . import validation
from .registry import Task, register


def check(cfg: DictConfig, method) -> None:
    """The method must say the image tokens it recomputes per step before running."""
    validation.check_method(cfg, method)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    _, rows, cols = token_geometry(model)
    if method is not None and method.offline_schedule(model["steps"], rows * cols) is None:
        raise ConfigError(f"task=macs counts MACs from the image tokens a method recomputes per step, known before "
                          f"running; method={cfg.method.name} does not say them: use task=generate (its "
                          "metrics.json holds the executed MACs)")


def count(cfg: DictConfig, run_dir, method) -> dict:
    """The model's and the method's transformer MACs from the configs alone (no weights)."""
    model_cfg = transformer_config(OmegaConf.to_container(cfg.model, resolve=True))
    return report_for_model(model_cfg, method).as_metrics()


register(Task("macs", "count the transformer MACs from the configs alone (no weights, no images)", count, check))
