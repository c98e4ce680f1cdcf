"""Signatures against direct double/triple sums; linear functionals: FFT against the direct sum."""

import numpy as np
import pytest

from longssm.tasks import functionals, signatures


def direct_area(a, b):
    n = len(a)
    return np.array([sum(a[s] * b[u] for u in range(t + 1) for s in range(u))
                     + 0.5 * sum(a[u] * b[u] for u in range(t + 1)) for t in range(n)])


def direct_level3(a, b, c):
    out = []
    for t in range(len(a)):
        r = range(t + 1)
        total = sum(a[s] * b[u] * c[v] for v in r for u in range(v) for s in range(u))
        total += 0.5 * sum(a[s] * b[v] * c[v] for v in r for s in range(v))
        total += 0.5 * sum(a[s] * b[s] * c[v] for v in r for s in range(v))
        total += sum(a[v] * b[v] * c[v] for v in r) / 6
        out.append(total)
    return np.array(out)


def test_area_against_double_sum():
    dx = np.random.default_rng(0).normal(size=(3, 17, 2))
    got = signatures.area(dx)
    for b in range(3):
        np.testing.assert_allclose(got[b], direct_area(dx[b, :, 0], dx[b, :, 1]), rtol=1e-10, atol=1e-12)


def test_level3_against_triple_sum():
    dx = np.random.default_rng(1).normal(size=(2, 13, 3))
    got = signatures.level3(dx)
    for b in range(2):
        np.testing.assert_allclose(got[b], direct_level3(*dx[b].T), rtol=1e-10, atol=1e-12)


def test_area_of_a_fine_path_is_the_integral():
    """A unit square traversed counter-clockwise in small steps: signed area S12 - S21 = 2 * 1."""
    k = 50
    steps = [(1 / k, 0)] * k + [(0, 1 / k)] * k + [(-1 / k, 0)] * k + [(0, -1 / k)] * k
    dx = np.array(steps)[None]
    s12 = signatures.area(dx)[0, -1]
    s21 = signatures.area(dx[..., ::-1])[0, -1]
    np.testing.assert_allclose(s12 - s21, 2.0, rtol=1e-12)


@pytest.mark.parametrize("kind", functionals.MEMORIES)
def test_fft_convolution_against_direct_sum(kind):
    n = 73
    x = np.random.default_rng(2).normal(size=(3, n))
    rho = functionals.memory(kind, n)
    want = np.array([[sum(rho[t - s] * x[b, s] for s in range(t + 1)) for t in range(n)]
                     for b in range(3)])
    np.testing.assert_allclose(functionals.convolve(x, rho), want, rtol=1e-9, atol=1e-10)


def test_polynomial_memory_values():
    rho = functionals.memory("polynomial", 101)
    np.testing.assert_allclose(rho[[0, 10, 100]], [1.0, 2.0**-1.1, 11.0**-1.1])
