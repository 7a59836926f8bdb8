"""Checks of `run.py`'s command line, made before Hydra creates any folder.

Hydra names an unknown override key in a single run and with `-m`, but not through a sweep file:
`sweep=...` sets `hydra.mode: MULTIRUN`, Hydra finds the mode by composing the config, takes a failed
composition for a single run and then reports "Ambiguous value ... add --multirun" for the swept values.
Here the config is composed as Hydra composes a sweep's base config and each overridden key is looked
up in it, so a typo is named in one line whatever the form of the command. `output_root` is
checked here too: Hydra creates the run folder in it before any task runs.
"""

from __future__ import annotations

import difflib

from omegaconf import DictConfig, OmegaConf

from ..base.config_files import CONF, ConfigError
from ..tasks.validation import check_output_root

_ABSENT = object()


def check(argv: list[str]) -> None:
    """Raises ConfigError for an override key the composed config lacks or an unusable `output_root`.
    Anything else (a malformed override, an unknown group option) is left to Hydra, which names it."""
    from hydra._internal.utils import get_args_parser  # the parser `hydra.main` reads the command line with
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path \
            or args.config_dir or args.experimental_rerun:
        return
    try:
        parsed = [o for o in OverridesParser.create().parse_overrides(args.overrides) if not o.is_hydra_override()]
    except Exception:  # malformed: Hydra says where
        return
    # As Hydra composes a sweep's base config: swept values left out, swept groups at their defaults.
    is_group = {o.input_line: (CONF / o.key_or_group).is_dir() for o in parsed}
    groups = [o for o in parsed if is_group[o.input_line] and not o.is_sweep_override()]
    keys = [o for o in parsed if not is_group[o.input_line] and not (o.is_add() or o.is_force_add() or o.is_delete())]
    if any(is_group[o.input_line] and o.is_sweep_override() for o in parsed):
        keys = [o for o in keys if not o.is_sweep_override()]  # may exist in some of the swept options only
    name = args.config_name or "config"
    cfg = _compose(name, [o.input_line for o in groups + keys if not o.is_sweep_override()])
    if cfg is None:  # an unknown key, or a problem Hydra names itself
        cfg = _compose(name, [o.input_line for o in groups])
        if cfg is not None:
            _check_keys(cfg, keys)
        return
    _check_keys(cfg, keys)
    check_output_root(cfg.output_root)


def _compose(config_name: str, overrides: list[str]) -> DictConfig | None:
    """The composed config, or None when Hydra should report the problem (it lists what is allowed)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose(config_name, overrides, return_hydra_config=True)
    except Exception:
        return None


def _check_keys(cfg: DictConfig, keys) -> None:
    for override in keys:
        if not _exists(cfg, override.key_or_group):
            raise ConfigError(_unknown(cfg, override.key_or_group, override.input_line, cfg.hydra.runtime.choices))


def _exists(cfg: DictConfig, key: str) -> bool:
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True) is not _ABSENT
    except Exception:  # a mandatory (???) or unresolvable value: the key is there
        return True


def _unknown(cfg: DictConfig, key: str, override: str, choices) -> str:
    """`method.config.warmup_stepz=3: no such setting for method=cat (did you mean ...?); allowed ...`"""
    parts = key.split(".")
    depth = next(i for i in range(len(parts)) if not _exists(cfg, ".".join(parts[: i + 1])))
    parent = ".".join(parts[:depth])
    node = OmegaConf.select(cfg, parent) if parent else cfg
    names = [str(k) for k in node.keys() if not str(k).startswith("_") and k != "hydra"] \
        if isinstance(node, DictConfig) else []
    where = f" for {parts[0]}={choices[parts[0]]}" if depth and choices.get(parts[0]) else ""
    guess = difflib.get_close_matches(parts[depth], names, n=1)
    hint = f" (did you mean {'.'.join(parts[:depth] + guess + parts[depth + 1:])}?)" if guess else ""
    allowed = f"allowed under {parent}: " if parent else "allowed top-level settings: "
    return (f"{override}: no such setting{where}{hint}; {allowed}{', '.join(names) or 'none'}; "
            f"to add a new key write +{override}")
