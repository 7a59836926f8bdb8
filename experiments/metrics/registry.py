"""The metric registry: one `Metric` per quantity measured on a run's images, registered by the module that
computes it.

Every module of `experiments/metrics/` is imported with the package, so adding a metric is adding its file
(`register(Metric(...))` in it; docs/architecture.md, "Adding a metric"). The run's evaluation, the fair
comparison, tables, sweeps, figures and verdicts ask this registry (name, label, unit, direction,
equivalence margin, ...), never a metric's name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .images import to_tensor


@dataclass
class Scoring:
    """What a metric scores: one variant's images of a run (the full model's or the method's), in prompt order.

    `shared` is kept across the metrics and variants of one evaluation (a model loaded once: `once`); `notes`
    collects further metrics.json entries a metric reports beside its values (how many reference images FID
    used)."""

    images: list  # PIL images, one per prompt
    prompts: list  # experiments.prompts.sets.Prompt, same order
    full: list | None  # the full model's images at the same prompts and seeds; None when scoring the full model
    data: str  # the prompt set's name (its judge, when it has one)
    settings: Mapping  # the run's metrics config (`metrics` of conf/metrics/*.yaml)
    shared: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], Any]):
        """`make()` the first time `key` is asked in this evaluation, the same object afterwards."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    @functools.cached_property
    def pixels(self):
        """The images and the full model's, as float tensors in [0, 1] of one size.  -> ([N, 3, H, W], [N, 3, H, W])"""
        x, y = to_tensor(self.images), to_tensor(self.full)
        if x.shape != y.shape:
            raise ValueError(f"fidelity needs paired images of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
        return x, y


def _always(*_) -> bool:
    return True


def _nothing(*_) -> None:
    return None


@dataclass(frozen=True)
class Metric:
    """A metric as the harness knows it.

    Attributes:
        name: its key in metrics.json (`<name>`, the full model's `<name>_full`, intervals `<name>_lo/_hi`),
            in records.jsonl and in every table.
        short: how a table's column or a sentence names it ("PSNR").
        label: how an axis names it ("PSNR to the full model").
        compute: (Scoring) -> one value per image (a sequence or a tensor) when `per_image`, else one number.
        enabled: (the run's metrics config) -> whether the run measures it.
        unit: its unit ("dB"), or "".
        lower_is_better: the direction of a better value (verdicts, "best" marks, sorting).
        against_full: measured between the method's image and the full model's at the same prompt and seed
            (fidelity): only the method gets a value. Otherwise every variant's images are scored on their own.
        per_image: one value per image (a mean over prompts with its bootstrap interval, paired differences);
            otherwise one value for the whole image set (FID).
        margin: the largest paired difference that counts as no difference (equivalence verdicts).
        digits: decimals shown in tables.
        comparison: measured on every setting the fair comparison evaluates (`task=compare`): weight-free and
            cheap.
        objective: the metric the comparison tunes by and leads its report with (exactly one).
        applies: (prompt set name) -> whether it can be measured on that set (a judge needs its grammar).
        check: (the run's metrics config) -> None; raises ValueError, one line, when the run cannot measure it
            (a missing package), before any model loads.
        check_prompts: (prompts, prompt set name) -> None; raises ValueError naming a prompt it cannot score.
    """

    name: str
    short: str
    label: str
    compute: Callable[[Scoring], Any]
    enabled: Callable[[Mapping], bool]
    unit: str = ""
    lower_is_better: bool = False
    against_full: bool = False
    per_image: bool = True
    margin: float = 0.0
    digits: int = 3
    comparison: bool = False
    objective: bool = False
    applies: Callable[[str], bool] = _always
    check: Callable[[Mapping], None] = _nothing
    check_prompts: Callable[[list, str], None] = _nothing

    @property
    def axis_label(self) -> str:
        """`label (unit)`, saying so when lower is better."""
        unit = f" ({self.unit})" if self.unit else ""
        return self.label + unit + (" (lower is better)" if self.lower_is_better else "")

    @property
    def columns(self) -> tuple[str, ...]:
        """Its columns in a table of runs: the method's value, and the full model's unless it is measured
        against the full model."""
        return (self.name,) if self.against_full else (self.name, f"{self.name}_full")


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Makes `metric` known to the harness (under `metric.name`)."""
    others = [m.name for m in METRICS.values() if m.objective and m.name != metric.name]
    if metric.objective and others:
        raise ValueError(f"metric {metric.name!r} is the comparison's objective, but so is {others[0]!r}")
    METRICS[metric.name] = metric
    return metric


def ordered(per_image: bool | None = None) -> list[Metric]:
    """The registered metrics as tables show them: the objective, the other metrics against the full model,
    the scores of each image on its own, then the set-level metrics, each group in registration order (only
    the per-image ones, or only the set-level ones, when `per_image` is given)."""
    metrics = sorted(METRICS.values(), key=lambda m: (not m.objective, not m.per_image, not m.against_full))
    return [m for m in metrics if per_image is None or m.per_image == per_image]


def objective() -> Metric:
    """The metric the comparison tunes by (`objective=True`)."""
    return next(m for m in METRICS.values() if m.objective)


def enabled(settings: Mapping, data: str) -> list[Metric]:
    """The metrics a run measures: those its metrics config enables that apply to its prompt set."""
    return [m for m in METRICS.values() if m.enabled(settings) and m.applies(data)]


def spec(name: str) -> Metric | None:
    """The metric registered as `name`, or None for a column that is no metric (a MAC count, a setting)."""
    return METRICS.get(name)


def mean_of(values) -> float:
    """The mean over prompts of per-image values: in the tensor's own dtype for a tensor (as torchmetrics
    reports it), else in Python floats."""
    return float(values.mean()) if hasattr(values, "mean") else sum(values) / len(values)
