"""Paths of the project, plain access to conf/ (for the CLIs that run without Hydra), and the error a bad
setting raises."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


class ConfigError(ValueError):
    """A setting is invalid; the message says which, and what is allowed (`run.py` prints it without a
    traceback)."""


class Unavailable(FileNotFoundError):
    """Something a run needs (a hub model's weights, a prompt set) is not here and cannot be fetched now; the
    message says how to get it (`run.py` prints it without a traceback; the run's status.json keeps one)."""


def resolve(path: str | Path) -> Path:
    """A path from a config: absolute, or relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def default_setting(key: str):
    """A top-level setting of conf/config.yaml as configured there (e.g. `paired_reference`)."""
    from omegaconf import OmegaConf

    return OmegaConf.load(CONF / "config.yaml").get(key)


def calibration_file(method: str, model: str, steps: int) -> Path:
    """Where a method's calibration for a model and step count lives (written by scripts/calibrate.py, read by
    the `${calibrated:<field>}` resolver)."""
    return ROOT / "assets" / method / f"{model}-{int(steps)}.json"


def calibration_source(cfg) -> tuple[str, int]:
    """(method name, step count) of the stored calibration a run reads: its own, or the one `method.calibration.of`
    / `method.calibration.steps` ask for (an ablation arm renamed in a sweep reads its method's)."""
    from omegaconf import OmegaConf

    wanted = OmegaConf.select(cfg, "method.calibration", default=None) or {}
    return wanted.get("of") or cfg.method.name, wanted.get("steps") or cfg.model.steps
