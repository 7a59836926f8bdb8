"""Count the transformer MACs of the full model and a method from the configs alone, on `meta` (no weights):
`python run.py task=macs ...` without a run folder, printed for a reader (or as JSON).

    python scripts/count_macs.py model=sd3_medium model.steps=50 method=ras [--json]

Takes run.py's groups and keys as overrides.
"""

from __future__ import annotations

import argparse
import json

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.base.config_files import CONF, ConfigError, Unavailable
from experiments.base.methods import knob_of
from experiments.lifecycle import resolvers  # noqa: F401  (registers the config resolvers)
from experiments.lifecycle.command_line import check
from experiments.tasks.macs import count
from experiments.tasks.validation import validate


def counted(overrides: list[str]) -> tuple:
    """(config, metrics) of `python run.py task=macs <overrides>`; a bad override or setting is one line saying
    what is allowed, as run.py says it."""
    from hydra.errors import HydraException, MissingConfigException

    try:
        check(overrides)  # an unknown key, with the settings there are
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, "task=macs"])
        return cfg, count(cfg, None, validate(cfg))
    except (ConfigError, Unavailable) as err:
        raise SystemExit(f"error: {err}") from None
    except MissingConfigException as err:  # an unknown group option: Hydra lists the options over many lines
        options = f"; allowed: {', '.join(err.options)}" if err.options else ""
        raise SystemExit(f"error: {str(err).splitlines()[0]}{options}") from None
    except HydraException as err:  # a malformed override
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Count transformer MACs of the full model and a method, offline.")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="run.py overrides (model=..., model.steps=..., method=..., ...)")
    args = p.parse_args(argv)
    cfg, metrics = counted(args.overrides)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    steps = cfg.model.steps
    knob, value = knob_of(OmegaConf.to_container(cfg.method, resolve=True))
    setting = f" {knob}={value}" if knob else ""
    print(f"model {cfg.model.name}  {cfg.model.height}x{cfg.model.width}  {steps} steps  method {cfg.method.name}{setting}")
    print(f"full transformer:   {metrics['transformer_macs_full'] / steps / 1e12:.3f} TMACs/step, "
          f"{metrics['transformer_macs_full']:.4g} MACs/image")
    print(f"method transformer: {metrics['transformer_macs']:.4g} MACs/image  (reduction "
          f"{100 * metrics['macs_reduction']:.1f}%)")
    if "text_encoder_macs" in metrics:
        print(f"text encoders:      {metrics['text_encoder_macs']:.4g} MACs/prompt")
    if "vae_decode_macs" in metrics:
        print(f"VAE decode:         {metrics['vae_decode_macs']:.4g} MACs/image")


if __name__ == "__main__":
    main()
