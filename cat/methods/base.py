"""The method contract: one frozen config dataclass per method, and the handle it applies.

A method is a frozen config dataclass (validated in `__post_init__`, defaults = its authors'
recommended setting) registered with `@register`, plus a handle class (`MethodHandle`, from
`cat/engine/handle.py`) that patches a pipeline or transformer in place. `cat.apply(target, config)`
dispatches on the config's type, as diffusers' `enable_cache(config)` does, and returns the handle;
`handle.remove()` restores the model exactly. Every module of `cat/methods/` is imported when `cat` is,
so defining the class is all it takes:

    @register
    @dataclass(frozen=True)
    class MyConfig(MethodConfig):
        name: ClassVar[str] = "mine"
        handle: ClassVar[type] = MyHandle   # implements _install, appending exact inverses to self._undo
        interval: int = 2
        def __post_init__(self): check(is_int(self.interval) and self.interval >= 1, self, "interval", "an integer >= 1")

The experiment harness asks a config, never a name: the methods below (what the step count and the
model allow, the defaults that depend on the step count, the authors' setting per architecture class,
example settings, the run key's ignored fields, the offline MACs schedule, calibration), and
`has_warmup`: every method but the fewer-steps one has a field `warmup_steps`, the number of leading
steps it computes in full (`with_warmup` sets it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..engine.handle import MethodHandle
from ..families import ARCHITECTURES  # family name -> the authors' code it follows ("mmdit" or "pixart")

METHODS: dict[str, type["MethodConfig"]] = {}


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses set `name` and `handle` and validate their fields."""

    name: ClassVar[str] = ""
    handle: ClassVar[type[MethodHandle] | None] = None
    # Whether the config has a field `warmup_steps`: the number of leading steps computed in full (an
    # integer >= 1, smaller than the step count). Only the fewer-steps method has none.
    has_warmup: ClassVar[bool] = True
    # Whether `calibrate` measures for the config's own settings (`config=`, given by scripts/calibrate.py):
    # a calibration that holds for some settings only.
    calibrates_with_settings: ClassVar[bool] = False
    # Whether `calibrate`'s measurements choose among many candidates (forecast_search's schedules): on few
    # prompts the choice fits them, so scripts/calibrate.py warns unless the whole calibration split is used.
    calibration_selects: ClassVar[bool] = False

    def check_steps(self, num_steps: int) -> None:
        """Checks the settings that depend on the step count (called before any model loads)."""

    def check_tokens(self, num_tokens: int) -> None:
        """Checks the settings that depend on the number of image tokens (called before any model loads)."""

    def check_model(self, transformer_class: str, device: str) -> None:
        """Checks the settings that depend on the model's transformer class and the device (before any model
        loads); raises ValueError or NotImplementedError."""

    def call_overrides(self, reference_steps: int | None = None) -> dict:
        """Pipeline call arguments the method changes (e.g. fewer steps) for a call whose reference runs
        `reference_steps` (None: not given; a method that needs it raises); most methods change none."""
        return {}

    @classmethod
    def for_steps(cls, num_steps: int) -> dict:
        """The defaults that depend on the step count, at `num_steps` (the authors' values chosen for their
        step count, scaled); conf files read them through the `for_steps` resolver."""
        return {}

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """The field values the authors' code fixes for the architecture class of `family` (a `cat.families`
        name: "sd3" and "flux" follow the authors' MMDiT / FLUX code, "pixart" their PixArt code or the nearest
        they have) at `num_steps` steps, so that `cls(**cls.authors(family, num_steps))` is their setting. Fields
        that depend on the model's size rather than its architecture are left out, and so are fields the authors
        have no value for. Each method's docstring says which file and function every value follows."""
        raise NotImplementedError(f"{cls.__name__} declares no authors' setting")

    @classmethod
    def examples(cls, num_steps: int) -> tuple["MethodConfig", "MethodConfig"]:
        """(a setting that changes nothing, one that accelerates) for a `num_steps` schedule on a small
        model (16x16 image tokens): what the interface tests run every method at."""
        raise NotImplementedError(f"{cls.__name__} declares no example settings")

    def key_ignores(self) -> tuple[str, ...]:
        """Fields this configuration never reads: runs that differ only in them are the same run."""
        return ()

    def offline_schedule(self, num_steps: int, num_tokens: int) -> list[int] | None:
        """Image tokens recomputed per sample at each step, known before running (from it MACs are counted
        offline, `task=macs`); None when the method decides while it runs."""
        return None

    def base(self) -> "MethodConfig | None":
        """For a variant of another method (a subclass of its config): that method with the same fields,
        timed beside it by the speed benchmark so that what the variant adds shows as a difference at the
        same settings; None for a method that varies none."""
        return None

    def missing_calibration(self, transformer_class: str) -> str | None:
        """What the method still needs measured on this model before it can run (None: nothing)."""
        return None

    @classmethod
    def calibrate(cls, pipe, prompts: list[str], num_inference_steps: int, **call_kwargs) -> dict:
        """The fields `missing_calibration` asks for, measured on `pipe` at `num_inference_steps`."""
        raise NotImplementedError(f"{cls.__name__} needs no calibration")

    @classmethod
    def combine_calibrations(cls, measured: list[dict]) -> dict:
        """One calibration from several `calibrate` results (scripts/calibrate.py measures one per prompt, each
        with its own seed): by default the mean of every field, element by element for sequences (cut to the
        shortest). A method whose fields are not means of per-prompt values (a fit) combines them itself."""
        return {name: _mean([m[name] for m in measured]) for name in measured[0]}


def architecture(config_cls: type[MethodConfig], family: str, num_steps: int) -> str:
    """"mmdit" or "pixart": the authors' code `config_cls.authors(family, num_steps)` follows; ValueError
    naming the allowed families for another family, or for a step count that is not an integer >= 1."""
    if family not in ARCHITECTURES:
        raise ValueError(f"{config_cls.__name__}.authors: family={family!r} is invalid: family must be one of "
                         f"{', '.join(sorted(ARCHITECTURES))}.")
    if not is_int(num_steps) or num_steps < 1:
        raise ValueError(f"{config_cls.__name__}.authors: num_steps={num_steps!r} is invalid: num_steps must be "
                         f"an integer >= 1.")
    return ARCHITECTURES[family]


def with_warmup(config: MethodConfig, warmup_steps: int | None) -> MethodConfig:
    """A copy of `config` with `warmup_steps` leading full steps (validated as the config validates it);
    ValueError for a method without a warm-up (`has_warmup` is False: the fewer-steps method)."""
    if not type(config).has_warmup:
        raise ValueError(f"{type(config).__name__} has no warm-up (has_warmup is False): it computes every step "
                         f"it runs in full")
    return dataclasses.replace(config, warmup_steps=warmup_steps)


def check_warmup(config: MethodConfig, allow_none: bool = False) -> None:
    """Validates `warmup_steps`: an integer >= 1 (or None where `allow_none`)."""
    value = config.warmup_steps
    check((allow_none and value is None) or (is_int(value) and value >= 1), config, "warmup_steps",
          ("None or " if allow_none else "") + "an integer >= 1")


def check_warmup_steps(config: MethodConfig, num_steps: int) -> None:
    """Refuses a warm-up that covers every step (the method would change nothing)."""
    value = config.warmup_steps
    check(value is None or value < num_steps, config, "warmup_steps",
          f"smaller than the number of steps ({num_steps}), or {type(config).__name__.removesuffix('Config')} "
          f"changes nothing")


def register(config_cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: makes `config_cls.name` known to `cat.METHODS` and to `cat.apply`."""
    if not config_cls.name:
        raise ValueError(f"{config_cls.__name__} needs a `name`")
    METHODS[config_cls.name] = config_cls
    return config_cls


def _mean(values: list):
    """The mean of numbers, or of equally long sequences of numbers element by element (cut to the shortest)."""
    if isinstance(values[0], (list, tuple)):
        return [sum(v[i] for v in values) / len(values) for i in range(min(map(len, values)))]
    return sum(values) / len(values)


def is_int(value) -> bool:
    """An integer, not a bool (`True` is an `int` to Python): what every config's and the harness's checks ask."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_num(value) -> bool:
    """A real number (int or float), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(ok: bool, config, field: str, allowed: str) -> None:
    """Raises `ValueError("<Config>.<field>=<value> is invalid: <field> must be <allowed>.")` unless ok."""
    if not ok:
        value = getattr(config, field, None)
        raise ValueError(f"{type(config).__name__}.{field}={value!r} is invalid: {field} must be {allowed}.")


def min_ratio(num_tokens: int) -> str:
    """The smallest ratio that keeps one of `num_tokens` tokens under `round`, said for an error message."""
    return (f"the smallest allowed value is just above 0.5/{num_tokens} = {0.5 / num_tokens:.3g} "
            f"(1/{num_tokens} = {1 / num_tokens:.3g} gives one token)")


def scale_steps(value: int, num_steps: int, authors_steps: int = 28) -> int:
    """A step index or count chosen by a method's authors for `authors_steps` steps, at `num_steps` (>= 1)."""
    return max(1, round(int(value) * int(num_steps) / authors_steps))
