"""What a method's YAML says about reaching a compute target (`Plan`: its knob, the knob's domain, its tuning
grid), the base setting of each variant of the fair comparison, and the settings a variant searches."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging

from omegaconf import DictConfig, OmegaConf

import cat

log = logging.getLogger(__name__)

VARIANTS = ("authors", "tuned", "shared_warmup")


@dataclasses.dataclass(frozen=True)
class Times:
    """A tuning-grid value relative to the variant's base setting: `factor` times the base's value of the field
    (an integer field rounded, at least 1). A YAML grid says `num_clusters: {times: [0.5, 1]}`: half and all of
    the model's cluster count (`model.num_clusters`, which the base reads), on every model."""

    factor: float

    def of(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a tuning grid's `times: [{self.factor:g}]` needs a numeric field, got {value!r}")
        scaled = self.factor * value
        return max(1, round(scaled)) if isinstance(value, int) else scaled


def _grid(name, values) -> list:
    """A YAML tuning-grid entry as a list of values: a list, or {times: [factors]} (`Times`)."""
    if isinstance(values, dict):
        if set(values) != {"times"}:
            raise ValueError(f"tune.{name}={values} is invalid; allowed: a list of values or {{times: [factors]}}")
        return [Times(float(f)) for f in values["times"]]
    return list(values)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the method's YAML says about reaching a target: the compute knob, its domain, the tuning grid."""

    knob: str
    levels: tuple = ()
    knob_range: tuple[float, float] | None = None
    tune: dict = dataclasses.field(default_factory=dict)

    @property
    def continuous(self) -> bool:
        return self.knob_range is not None

    @classmethod
    def of(cls, method: DictConfig | dict) -> "Plan":
        m = OmegaConf.to_container(method, resolve=True) if OmegaConf.is_config(method) else dict(method)
        name = m.get("name")
        if not m.get("knob"):
            raise ValueError(f"method={name}: task=compare needs the method's compute knob (`knob:` in "
                             f"conf/method/{name}.yaml)")
        knob_range = m.get("knob_range")
        if knob_range is not None and (len(knob_range) != 2 or not knob_range[0] < knob_range[1]):
            raise ValueError(f"method={name}: knob_range={knob_range} must be [low, high] with low < high")
        levels = tuple(m.get("levels") or ())
        if knob_range is None and len(levels) < 2:
            raise ValueError(f"method={name}: task=compare needs `knob_range: [low, high]` (a continuous knob) or at "
                             f"least two `levels` (a discrete one) in conf/method/{name}.yaml")
        tune = {k: _grid(k, v) for k, v in (m.get("tune") or {}).items() if v is not None}
        return cls(m["knob"], levels, tuple(knob_range) if knob_range is not None else None, tune)


def setting_key(config) -> str:
    """A short digest of a method setting (its type and every field)."""
    text = f"{type(config).__module__}.{type(config).__qualname__}{json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(config, base, knob: str) -> str:
    """A setting as a reader wants it: the knob, then every field that differs from the variant's base."""
    value = getattr(config, knob)
    parts = [f"{knob}={value:.4g}" if isinstance(value, float) else f"{knob}={value}"]
    for f in dataclasses.fields(config):
        if f.name != knob and getattr(config, f.name) != getattr(base, f.name):
            parts.append(f"{f.name}={getattr(config, f.name)}")
    return ", ".join(parts)


def kept_fields(cfg: DictConfig, knob: str) -> tuple[str, ...]:
    """The method's config fields a comparison keeps as configured (`compare.keep`: an ablation arm's) instead of
    taking the authors' value, and leaves out of the tuning grid; never the compute knob (the search moves it)."""
    return tuple(sorted({str(n) for n in (OmegaConf.select(cfg, "compare.keep", default=None) or [])} - {knob}))


def derived_fields(node: DictConfig) -> frozenset[str]:
    """The fields of a method's config node that its YAML derives by interpolation (`${for_steps:...}`, `${level:}`):
    the YAML's own values, never a choice the configuration made against the authors' setting."""
    return frozenset(k for k in node if OmegaConf.is_interpolation(node, k))


def authors_conflicts(method, family: str, num_steps: int, keep: tuple[str, ...], knob: str,
                      derived: frozenset[str] = frozenset()) -> dict:
    """{field: (configured, authors')} for every field configured away from its class default that the authors'
    setting would replace with another value and `keep` does not keep: a comparison refuses these rather than run
    the authors' value under the configured one's name. Fields in `derived` (the YAML's interpolations, e.g. a
    step-scaled `${for_steps:...}` default) are the YAML's, not a choice, and are never a conflict."""
    cls = type(method)
    try:
        authors = cls.authors(family, num_steps)
    except (NotImplementedError, AttributeError):
        return {}
    defaults = cls()
    return {k: (getattr(method, k), v) for k, v in authors.items()
            if k not in keep and k != knob and k not in derived and getattr(method, k) != getattr(defaults, k)
            and getattr(method, k) != v}


def variant_base(method, variant: str, family: str, num_steps: int, shared_warmup: int | None = None,
                 keep: tuple[str, ...] = ()):
    """The variant's setting before its compute knob moves: the authors' (over the YAML's) except the fields in
    `keep` (`kept_fields`), with the reference method's warm-up (`shared_warmup`, CAT's) for variant
    `shared_warmup`; None when the variant does not apply to the method."""
    cls = type(method)
    try:
        authors = cls.authors(family, num_steps)
    except (NotImplementedError, AttributeError):
        log.warning("%s declares no authors' setting: the YAML's setting stands for it", cls.__name__)
        authors = {}
    for name in keep:
        if name in authors and authors[name] != getattr(method, name):
            log.info("%s.%s=%r kept as configured (the authors' setting: %r)", cls.__name__, name,
                     getattr(method, name), authors[name])
    base = dataclasses.replace(method, **{k: v for k, v in authors.items() if k not in keep})
    if variant == "shared_warmup" and "warmup_steps" in keep:
        return base
    if variant == "shared_warmup":
        if not getattr(cls, "has_warmup", True) or not hasattr(base, "warmup_steps"):
            return None
        if shared_warmup is None:
            raise ValueError("variant shared_warmup needs the reference method's warm-up")
        return dataclasses.replace(base, warmup_steps=shared_warmup)
    return base


def reference_warmup(reference: str, family: str, num_steps: int) -> int | None:
    """The warm-up of the reference method's authors' setting (`paired_reference`: CAT's 8 of 28 steps)."""
    try:
        return cat.METHODS[reference].authors(family, num_steps).get("warmup_steps")
    except (KeyError, NotImplementedError):
        return None


def candidates(base, plan: Plan, variant: str, num_steps: int, num_tokens: int) -> list:
    """The settings searched at each target: the variant's base; for `tuned` every combination of the grid
    over the base, and only those (the base itself where the grid holds its values: a tuned method picks its
    warm-up from the grid's, as every other method does, never from its authors' value outside it); invalid
    ones left out, duplicates removed."""
    out, seen = [], set()
    combos = [{}] if variant != "tuned" else [dict(zip(plan.tune, values))
                                              for values in itertools.product(*plan.tune.values())]
    for combo in combos:
        combo = {k: v.of(getattr(base, k)) if isinstance(v, Times) else v for k, v in combo.items()}
        try:
            config = dataclasses.replace(base, **combo)
            config.check_steps(num_steps)
        except (TypeError, ValueError) as err:
            log.info("tuning grid: %s left out (%s)", combo, err)
            continue
        key = setting_key(config)
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out
