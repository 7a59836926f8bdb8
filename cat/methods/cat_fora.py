"""`cat_fora`: CAT composed with FORA's step-level reuse.

The CAT paper argues token pruning is orthogonal to step-level caching (FORA: Selvaraju et al. 2024,
arXiv 2407.01425). Here, after CAT's warm-up, only every `reuse_interval`-th step is a CAT pruned
step (selected tokens recomputed, selection updated); the steps in between are FORA reuse steps:
no image token is recomputed, every attention and feed-forward module returns its cached output
(the text stream and the attention of text queries over all keys still run, as in CAT), and the
blocks' gates and residuals follow the current step, as in FORA. `reuse_interval=1` is plain CAT.
CAT's timeline (`phase_of`) reads `reuse_interval`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .base import check, is_int, register
from .cat import CATConfig, CATHandle


@register
@dataclass(frozen=True)
class CATFORAConfig(CATConfig):
    """CAT's settings plus `reuse_interval`: after the warm-up, steps t0, t0+N, t0+2N, ... are CAT
    pruned steps and the others reuse every module's cached output (N=1: plain CAT).

    The authors' setting, `CATFORAConfig.authors(family, num_steps)`: CAT's (`CATConfig.authors`). The
    composition is this project's: no authors' code runs it, so `reuse_interval` has no authors' value and
    keeps its default (FORA's interval 3 was chosen for full steps, not for CAT's pruned ones).
    """

    name: ClassVar[str] = "cat_fora"
    handle: ClassVar[type] = CATHandle

    reuse_interval: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check(is_int(self.reuse_interval) and self.reuse_interval >= 1, self, "reuse_interval", "an integer >= 1")

    @classmethod
    def authors(cls, family: str, num_steps: int) -> dict:
        """CAT's authors' values; `reuse_interval` has none (see the class docstring)."""
        return super().authors(family, num_steps)

    @classmethod
    def examples(cls, num_steps: int) -> tuple["CATFORAConfig", "CATFORAConfig"]:
        nothing, fast = super().examples(num_steps)
        return dataclasses.replace(nothing, reuse_interval=1), fast
