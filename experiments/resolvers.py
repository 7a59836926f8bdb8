"""OmegaConf resolvers used by conf/.

`cat_warmup`: the authors use 8 full steps of 28; at other step counts the warm-up keeps that share,
round(8 / 28 * steps), at least 2 (50 steps -> 14, 20 steps -> 6).
`scale_steps`: a step index or count chosen by a method's authors at 28 steps, scaled to another
step count (RAS's dense steps 4, 12, 20; half the steps for `steps`).
`magcache_ratios`: MagCache's calibrated ratios for a model and step count (assets/magcache/), or
null when not calibrated (MagCacheConfig then says how to calibrate).
`pick`: a method's knob value at `level` (sweep=peers) or its default.
`run_id`: the run directory's name, a readable prefix plus the hash of everything that changes the
run's output (experiments/identity.py).
"""

from omegaconf import OmegaConf

from .identity import run_id


def cat_warmup(steps: int) -> int:
    return max(2, round(8 * int(steps) / 28))


def scale_steps(value: int, steps: int) -> int:
    return max(1, round(int(value) * int(steps) / 28))


def magcache_ratios(model: str, steps: int):
    import json

    from .config_files import ROOT

    path = ROOT / "assets" / "magcache" / f"{model}-{int(steps)}.json"
    return json.loads(path.read_text())["mag_ratios"] if path.exists() else None


def pick(levels, level, default):
    """A method's knob value: its default, or `levels[level]` when `level` is set (sweep=peers)."""
    if level is None:
        return default
    if not isinstance(level, int) or not 0 <= level < len(levels):
        raise ValueError(f"level={level!r} is invalid; allowed: null or 0..{len(levels) - 1} (levels {list(levels)})")
    return levels[level]


OmegaConf.register_new_resolver("pick", pick, replace=True)
OmegaConf.register_new_resolver("scale_steps", scale_steps, replace=True)
OmegaConf.register_new_resolver("magcache_ratios", magcache_ratios, replace=True)
OmegaConf.register_new_resolver("cat_warmup", cat_warmup, replace=True)
OmegaConf.register_new_resolver("run_id", lambda *, _root_: run_id(_root_), replace=True)
