"""The forecast of a module's output from its last full computations (`cat.core.forecast`): the authors'
finite-difference recursion, Taylor and scaled-Hermite weights, against hand computations and numpy's Hermite
polynomials."""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import hermite as H
from numpy.polynomial import polynomial as P

from cat.core import forecast as fc


def outputs(n, seed=0, shape=(2, 5, 3)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("basis", fc.BASES)
def test_order_0_is_plain_reuse_exactly(basis):
    ys = outputs(3)
    factors = fc.difference_factors(ys, [0, 1, 4], max_order=0)
    assert len(factors) == 1 and factors[0] is ys[-1]
    for x in (1, 2, 5):
        assert fc.forecast(factors, x, basis, scale=0.5) is ys[-1]


def test_order_1_equals_the_hand_computation():
    y0, y1 = outputs(2)
    factors = fc.difference_factors([y0, y1], [3, 7], max_order=1)
    assert torch.equal(factors[1], (y1 - y0) / 4)
    assert torch.allclose(fc.forecast(factors, 2), y1 + 2 * (y1 - y0) / 4, rtol=0, atol=1e-12)


def test_order_2_follows_the_authors_recursion():
    """F'_{i+1} = (F'_i - F_i) / d with d the latest spacing only (a warm-up step 1 apart, then 3 apart)."""
    y0, y1, y2 = outputs(3)
    factors = fc.difference_factors([y0, y1, y2], [1, 2, 5], max_order=2)
    d1 = (y1 - y0) / 1
    f1 = (y2 - y1) / 3
    f2 = (f1 - d1) / 3
    assert len(factors) == 3
    assert torch.allclose(factors[1], f1, atol=1e-12) and torch.allclose(factors[2], f2, atol=1e-12)
    x = 2
    assert torch.allclose(fc.forecast(factors, x), y2 + f1 * x + f2 * x ** 2 / 2, atol=1e-12)


def test_the_order_grows_by_one_per_full_step_up_to_max_order_and_restarts_without_a_distance():
    ys = outputs(5)
    factors = None
    for i, y in enumerate(ys):
        factors = fc.update_factors(factors, y, 1 if i else None, max_order=3)
        assert len(factors) == min(i + 1, 4)
    assert len(fc.update_factors(factors, ys[0], None, max_order=3)) == 1


def test_a_linear_trajectory_is_forecast_exactly_at_first_order_and_a_cubic_at_third_with_unit_steps():
    a, b, c, d = outputs(4)
    line = [a + b * s for s in (2, 5)]
    f = fc.difference_factors(line, [2, 5], max_order=1)
    assert torch.allclose(fc.forecast(f, 4), a + b * 9, atol=1e-12)
    # with unit spacing the factors are backward differences, whose Taylor sum is Newton's only to leading order
    cube = [a + b * s + c * s ** 2 + d * s ** 3 for s in range(4)]
    f = fc.difference_factors(cube, list(range(4)), max_order=3)
    assert torch.allclose(f[3], 6 * d, atol=1e-10)  # the third difference of a cubic is 3! d exactly


def test_hermite_polynomials_and_weights_match_numpys():
    for n in range(6):
        for u in (-1.3, 0.0, 0.4, 2.5):
            assert fc.hermite(u, n) == pytest.approx(H.hermval(u, [0] * n + [1]), rel=1e-12, abs=1e-12)
    x, s = 3, 0.5
    expected = [1.0] + [s ** i * H.hermval(s * x, [0] * i + [1]) / math.factorial(i) for i in range(1, 5)]
    assert fc.hermite_weights(x, 4, s) == pytest.approx(expected, rel=1e-12)
    # at scale 1 the weights are H_i(x) / i!
    assert fc.hermite_weights(x, 3, 1.0)[1:] == pytest.approx(
        [H.hermval(x, [0] * i + [1]) / math.factorial(i) for i in range(1, 4)], rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_hermite_weights_are_taylors_times_two_s_squared_to_the_i_plus_lower_powers(order):
    """As the paper relates the bases: s^i H_i(s x) / i! is a polynomial in x of degree i whose x^i coefficient
    is the Taylor weight's (1/i!) times (2 s^2)^i; at first order the two forecasts agree at s = 1/sqrt(2)."""
    s = 0.5
    for i in range(1, order + 1):
        in_u = H.herm2poly([0] * i + [1])  # H_i as powers of u
        in_x = in_u * s ** np.arange(i + 1) * s ** i / math.factorial(i)  # s^i H_i(s x) / i!, powers of x
        assert in_x[-1] == pytest.approx((2 * s * s) ** i / math.factorial(i), rel=1e-12)
        assert all(fc.hermite_weights(x, order, s)[i] == pytest.approx(P.polyval(x, in_x), rel=1e-12, abs=1e-12)
                   for x in (1, 2, 5))
    factors = fc.difference_factors(outputs(2), [0, 3], max_order=1)
    for x in (1, 2, 4):
        assert torch.allclose(fc.forecast(factors, x, "hermite", 1 / math.sqrt(2)), fc.forecast(factors, x),
                              atol=1e-12)


def test_weigh_uses_the_factors_there_are_and_the_forecast_is_batched():
    factors = fc.difference_factors(outputs(2, shape=(3, 4, 2)), [0, 2], max_order=4)  # only F_0, F_1 yet
    out = fc.weigh(factors, fc.taylor_weights(3, 4))
    assert torch.allclose(out, factors[0] + 3 * factors[1], atol=1e-12)
    per_sample = [fc.forecast([f[b] for f in factors], 3) for b in range(3)]
    assert torch.allclose(out, torch.stack(per_sample), atol=1e-12)


def test_bad_histories_and_bases_are_named():
    with pytest.raises(ValueError, match="one step per output"):
        fc.difference_factors(outputs(2), [0], 1)
    with pytest.raises(ValueError, match="increasing steps"):
        fc.difference_factors(outputs(2), [3, 3], 1)
    with pytest.raises(ValueError, match="basis='chebyshev' is invalid"):
        fc.weights(1, 1, "chebyshev")
