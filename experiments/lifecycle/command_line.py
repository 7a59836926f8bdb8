"""Checks of `run.py`'s command line, made before Hydra creates any folder.

Hydra names an unknown override key in a single run and with `-m`, but not through a sweep file:
`sweep=...` sets `hydra.mode: MULTIRUN`, Hydra finds the mode by composing the config, takes a failed
composition for a single run and then reports "Ambiguous value ... add --multirun" for the swept values.
Here the config is composed as Hydra composes a sweep's base config and each overridden key is looked
up in it, so a typo is named in one line whatever the form of the command. `output_root` and `name` are
checked here too (Hydra creates the run folder `output_root/runs/<name>/...` before any task runs), a new top-level
key added with `+` is refused (nothing would read it), and a sweep is validated cell by cell until one is valid,
so that a sweep none of whose cells can run is one error before any cell folder exists.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..base.config_files import CONF, ConfigError
from ..tasks.validation import check_name, check_output_root

_ABSENT = object()


def check(argv: list[str]) -> Path | None:
    """Raises ConfigError for an override key the composed config lacks, a new top-level key, an unusable
    `output_root` or `name`, and a sweep none of whose cells is valid; returns `output_root` (None when the
    command is left to Hydra). Anything else (a malformed override, an unknown group option) is left to Hydra,
    which names it."""
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
    added = [o for o in parsed if not is_group[o.input_line] and (o.is_add() or o.is_force_add())]
    if any(is_group[o.input_line] and o.is_sweep_override() for o in parsed):
        keys = [o for o in keys if not o.is_sweep_override()]  # may exist in some of the swept options only
    name = args.config_name or "config"
    cfg = _compose(name, [o.input_line for o in groups + keys if not o.is_sweep_override()])
    if cfg is None:  # an unknown key, or a problem Hydra names itself
        cfg = _compose(name, [o.input_line for o in groups])
        if cfg is not None:
            _check_keys(cfg, keys)
            _check_added(cfg, added)
        return
    _check_keys(cfg, keys)
    _check_added(cfg, added)
    check_output_root(cfg.output_root)
    check_name(cfg.name)
    if args.multirun or str(OmegaConf.select(cfg, "hydra.mode", default="")) == "RunMode.MULTIRUN":
        check_sweep(cfg, name, parsed)
    return Path(str(cfg.output_root)).expanduser()


def check_sweep(cfg: DictConfig, config_name: str, overrides) -> None:
    """Validates the sweep's cells, as Hydra's sweeper makes them (`hydra.sweeper.params`, then the command
    line's overrides), until one is valid: a sweep none of whose cells can run is one error here, before any
    cell folder exists. (A sweep with some invalid cells runs, and each of those records its error.)"""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ..tasks.validation import validate

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + [o.input_line for o in overrides]
    cells = [cell for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)
             for cell in batch]
    first = None
    for cell in cells:
        cell_cfg = _compose(config_name, cell, hydra=False)
        if cell_cfg is None:
            return  # Hydra names the problem when it composes the cell
        try:
            validate(cell_cfg)
            return
        except ConfigError as err:
            first = first or (cell, err)
        except Exception:  # not a configuration error: the cell runs and records it
            return
    if first is not None:
        cell, err = first
        fixed = {o.input_line for o in overrides if not o.is_sweep_override()}
        swept = " ".join(line for line in cell if line not in fixed)
        raise ConfigError(f"every one of the sweep's {len(cells)} cells is invalid, the first ({swept}) with: {err}")


def _compose(config_name: str, overrides: list[str], hydra: bool = True) -> DictConfig | None:
    """The composed config (with Hydra's own node), or None when Hydra should report the problem (it lists what
    is allowed)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose(config_name, overrides, return_hydra_config=hydra)
    except Exception:
        return None


def _check_keys(cfg: DictConfig, keys) -> None:
    for override in keys:
        if not _exists(cfg, override.key_or_group):
            raise ConfigError(_unknown(cfg, override.key_or_group, override.input_line, cfg.hydra.runtime.choices))


def _check_added(cfg: DictConfig, added) -> None:
    """A new top-level key added with `+` (`+seeed=3`) would be carried along and read by nothing: refused. Below
    the top level a configuration may leave optional keys out (a model's `scheduler`, `num_clusters`), so `+` adds
    them there."""
    for override in added:
        key = override.key_or_group
        if "." not in key and not _exists(cfg, key):
            raise ConfigError(_unknown(cfg, key, override.input_line, cfg.hydra.runtime.choices))


def _exists(cfg: DictConfig, key: str) -> bool:
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True) is not _ABSENT
    except Exception:  # a mandatory (???) or unresolvable value: the key is there
        return True


def _unknown(cfg: DictConfig, key: str, override: str, choices) -> str:
    """`method.config.warmup_stepz=3: no such setting for method=cat (did you mean ...?); allowed ...`. Adding the
    key with `+` is suggested only where an added key is read: not at the top level (nothing reads a new key
    there) nor in `method.config` (the method's config class has every field it reads)."""
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
    if not parent:
        tail = "; a new top-level key would be read by nothing"
    elif parent == "method.config":
        tail = ""
    else:
        tail = f"; to add a new key write +{override.lstrip('+')}"
    return f"{override}: no such setting{where}{hint}; {allowed}{', '.join(names) or 'none'}{tail}"
