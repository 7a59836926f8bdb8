"""Forecasting a module's output at a skipped step from its last full computations: TaylorSeer's
finite-difference factors (Liu et al. 2025, arXiv 2503.06923) evaluated in the Taylor basis, or in HiCache's
scaled Hermite basis (Feng et al., ICLR 2026, arXiv 2508.16984). Pure functions on tensors of any shape
(a module output [B, N, D]); the weights are Python numbers, so a forecast never reads the device.

Factors: a module's factors are [F_0, F_1, ..., F_m]. F_0 is its output at the last full step, F_i an
estimate of its i-th derivative per step. At each full step they follow the authors' recursion
(`update_factors`, their `taylor_utils.derivative_approximation`):

    F'_0 = y,    F'_{i+1} = (F'_i - F_i) / d        for i < min(max_order, m + 1),

y the new output, d the steps since the previous full step: one order deeper per full step, up to
`max_order`. With equally spaced full steps F_i is the i-th backward difference over d^i (Newton's
backward form); after a warm-up of consecutive full steps the first difference spans one step, the next d.

A forecast x steps after the last full step weighs the factors (`forecast`):

    Taylor  (TaylorSeer):  y(x) = sum_i  F_i x^i / i!
    Hermite (HiCache):     y(x) = F_0 + sum_{i>=1} F_i s^i H_i(s x) / i!

with H_i the physicists' Hermite polynomials (H_0 = 1, H_1(u) = 2u, H_{i+1}(u) = 2u H_i(u) - 2i H_{i-1}(u)) and
s the scale (their `hicache_scale_factor`). How the two relate: H_i(u) = 2^i u^i + (powers of u below i), so
the Hermite weight of F_i is the Taylor weight times (2 s^2)^i plus lower powers of x; the two first-order
forecasts agree at s = 1/sqrt(2) (2 s^2 = 1), and at s = 1 the Hermite weights are H_i(x) / i!. Order 0 (one
factor) is plain reuse in both: the cached output itself.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

BASES = ("taylor", "hermite")


def update_factors(factors: Sequence[torch.Tensor] | None, output: torch.Tensor, distance: int | None,
                   max_order: int) -> list[torch.Tensor]:
    """The factors after a full step whose module output is `output`, `distance` steps after the full step that
    gave `factors` (None: start again from `output` alone, as at the first full step)."""
    new = [output]
    if factors is None or distance is None:
        return new
    for i in range(min(max_order, len(factors))):
        new.append((new[i] - factors[i]) / distance)  # [*shape]
    return new


def difference_factors(outputs: Sequence[torch.Tensor], steps: Sequence[int], max_order: int) -> list[torch.Tensor]:
    """The factors of a module after the full computations `outputs` at `steps` (oldest first, increasing), by
    the authors' recursion from the first of them."""
    if len(outputs) != len(steps) or not outputs:
        raise ValueError(f"difference_factors needs one step per output (at least one), got {len(outputs)} outputs "
                         f"and {len(steps)} steps")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"difference_factors needs increasing steps, got {list(steps)}")
    factors = None
    for i, output in enumerate(outputs):
        factors = update_factors(factors, output, steps[i] - steps[i - 1] if i else None, max_order)
    return factors


def hermite(u: float, n: int) -> float:
    """The physicists' Hermite polynomial H_n at u (the three-term recurrence)."""
    previous, current = 1.0, 2.0 * u
    if n == 0:
        return previous
    for k in range(1, n):
        previous, current = current, 2.0 * u * current - 2.0 * k * previous
    return current


def taylor_weights(x: float, order: int) -> list[float]:
    """The weight of each factor F_0 .. F_order in a Taylor forecast x steps ahead: x^i / i!."""
    return [x ** i / math.factorial(i) for i in range(order + 1)]


def hermite_weights(x: float, order: int, scale: float) -> list[float]:
    """The weight of each factor F_0 .. F_order in a scaled-Hermite forecast x steps ahead: s^i H_i(s x) / i!
    (1 for F_0)."""
    return [1.0] + [hermite(scale * x, i) / math.factorial(i) * scale ** i for i in range(1, order + 1)]


def weigh(factors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """F_0 + sum_{i>=1} w_i F_i over the factors there are (weights beyond them are left out). One factor
    returns F_0 itself (plain reuse)."""
    out = factors[0]
    for factor, weight in zip(factors[1:], weights[1:]):
        out = torch.add(out, factor, alpha=weight)  # [*shape]
    return out


def weights(x: float, order: int, basis: str = "taylor", scale: float = 1.0) -> list[float]:
    """The factors' weights x steps after the last full step, in `basis` ("taylor" or "hermite" with `scale`)."""
    if basis == "taylor":
        return taylor_weights(x, order)
    if basis == "hermite":
        return hermite_weights(x, order, scale)
    raise ValueError(f"basis={basis!r} is invalid: basis must be one of {', '.join(BASES)}")


def forecast(factors: Sequence[torch.Tensor], x: float, basis: str = "taylor", scale: float = 1.0) -> torch.Tensor:
    """The module output forecast x steps after the last full step from its factors."""
    return weigh(factors, weights(x, len(factors) - 1, basis, scale))


def refresh_factors_(factors: Sequence[torch.Tensor], output: torch.Tensor, inv_distance: torch.Tensor,
                     valid: torch.Tensor) -> None:
    """`update_factors` in place on preallocated factors F_0 .. F_m, steered by tensors so that one compiled
    graph serves every full step: F'_0 = y and F'_{i+1} = valid_i (F'_i - F_i) inv_distance, `valid` [m + 1]
    holding 1 where the old F_i was set (0 restarts the orders above it at 0), `inv_distance` 1/d."""
    new = output
    for i, factor in enumerate(factors):
        following = (new - factor) * (inv_distance * valid[i]) if i + 1 < len(factors) else None  # [*shape]
        factor.copy_(new)
        new = following


def weigh_by(factors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """`weigh` with the weights in a tensor [m + 1] (on the factors' device): F_0 + sum_{i>=1} w_i F_i."""
    out = factors[0]
    for i in range(1, len(factors)):
        out = out + factors[i] * weights[i]  # [*shape]
    return out
