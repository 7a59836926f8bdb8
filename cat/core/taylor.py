"""Taylor forecasting of a feature from the steps that computed it (DBCache's TaylorSeer calibrator).

The factors of a feature Y are [Y, dY, d2Y, ...] at the last computed step: Y itself and its finite differences
per step, each divided by the steps between the two computed steps they come from. A forecast `elapsed` steps
after that step is the Taylor sum Y + dY e + d2Y e^2 / 2! + ... over the factors known so far.
"""

from __future__ import annotations

import math

import torch


def taylor_update(factors: list[torch.Tensor | None], value: torch.Tensor, window: int,
                  differences: bool = True) -> list[torch.Tensor | None]:
    """The factors after a computed step: `value` and its differences with the previous `factors` (computed
    `window` >= 1 steps before), as many orders as both have; only `value` where `differences` is False."""
    order = len(factors) - 1
    out: list[torch.Tensor | None] = [value] + [None] * order
    if not differences:
        return out
    for i in range(order):
        if factors[i] is None:
            break
        out[i + 1] = (out[i] - factors[i]) / window  # same shape as value
    return out


def taylor_forecast(factors: list[torch.Tensor | None], elapsed: int) -> torch.Tensor:
    """The Taylor sum of the known factors, `elapsed` steps after the step they were taken at."""
    out = factors[0]
    for i in range(1, len(factors)):
        if factors[i] is None:
            break
        out = out + factors[i] * (elapsed ** i / math.factorial(i))  # same shape as factors[0]
    return out
