"""φ-functions of exponential integrators against their defining integral (float64 quadrature)."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

from fastdiffusion.expint import SERIES_BELOW, phi


def phi_by_quadrature(j: int, x: float) -> float:
    return quad(lambda th: math.exp((1 - th) * x) * th ** (j - 1) / math.factorial(j - 1), 0, 1, epsabs=0,
                epsrel=1e-13)[0]


@pytest.mark.parametrize("j", [1, 2, 3, 4])
def test_phi_matches_its_integral(j):
    xs = [-16.0, -3.0, -0.6, -SERIES_BELOW, -0.2, -1e-9, 0.0, 1e-9, 0.3, SERIES_BELOW, 0.7, 4.0, 12.0]
    got = phi(j, np.array(xs)).numpy()
    want = np.array([phi_by_quadrature(j, x) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_phi_is_continuous_at_the_series_switch():
    for j in (1, 2, 3):
        below, above = phi(j, SERIES_BELOW - 1e-12), phi(j, SERIES_BELOW + 1e-12)
        assert abs(float(below - above)) < 1e-11
