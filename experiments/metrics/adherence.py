"""Prompt adherence: the weight-free judge of a bundled prompt set (`experiments.prompts.shapes`,
`experiments.prompts.scenes`) scores each image against its caption, for the full model and the method alike."""

from __future__ import annotations

from ..prompts.sets import bundled_package
from .registry import Metric, Scoring, register


def adherence(scoring: Scoring) -> list[float]:
    judge = bundled_package(scoring.data).judge
    return [judge(image, p.text)["score"] for image, p in zip(scoring.images, scoring.prompts)]


def check_prompts(prompts, data: str) -> None:
    """Every prompt must parse in the judge's grammar, or the judge cannot score its image."""
    parse = bundled_package(data).parse
    for p in prompts:
        try:
            parse(p.text)
        except ValueError as err:
            raise ValueError(f"prompt {p.index} is outside the {data} judge's grammar ({err}); fix the prompt file "
                             "or set metrics.adherence=false") from err


register(Metric(
    name="adherence", short="adherence", label="prompt adherence", compute=adherence,
    enabled=lambda settings: bool(settings.get("adherence")), margin=0.02, comparison=True,
    applies=lambda data: bundled_package(data) is not None, check_prompts=check_prompts,
))
