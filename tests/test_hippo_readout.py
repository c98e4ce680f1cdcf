"""HiPPO readouts: derivative at the window end, reconstruction over the documented window, the
new bases (LagT, GLagT, FouD, LegS-D) and the Prophecy forecaster."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import assert_close
from longssm import hippo

F64 = torch.float64


def rk4(measure, n, theta, u, t0, t1, c0, h=1e-3):
    """c' = (A c + B u(t)) / θ by classical RK4 (an independent integrator)."""
    A, B = hippo.transition(measure, n)
    A, B = A / theta, B / theta
    f = lambda t, c: A @ c + B * u(t)
    c, t = c0.clone(), t0
    for _ in range(int(round((t1 - t0) / h))):
        k1 = f(t, c)
        k2 = f(t + h / 2, c + h / 2 * k1)
        k3 = f(t + h / 2, c + h / 2 * k2)
        k4 = f(t + h, c + h * k3)
        c, t = c + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
    return c


def project_window(measure, n, theta, u, t):
    """Coefficients ∫ u(t - a) g_n(a) da / θ over the window [0, θ] by Gauss-Legendre quadrature."""
    x, w = (torch.tensor(v) for v in np.polynomial.legendre.leggauss(100))
    a, w = (x + 1) / 2 * theta, w / 2
    return (hippo.basis(measure, n, theta, a) * u(t - a) * w).sum(-1)


def signal(t):
    t = torch.as_tensor(t, dtype=F64)
    return torch.sin(3 * t) + 0.5 * torch.cos(7 * t)


def test_legt_derivative_readout_of_the_issue():
    """u = sin 3t + ½ cos 7t, N = 16, θ = 1: the SSM state read out gives u'(T) within 1e-3."""
    n, theta, T = 16, 1.0, 2.0
    c = rk4("legt", n, theta, signal, 0.0, T, torch.zeros(n, dtype=F64))
    estimate = float(hippo.derivative_readout("legt", n, theta) @ c)
    truth = 3 * math.cos(3 * T) - 3.5 * math.sin(7 * T)
    assert abs(estimate - truth) < 1e-3, (estimate, truth)
    # the readout weights are sqrt(2n+1) n(n+1)/θ
    assert float(hippo.derivative_readout("legt", 3, 2.0)[2]) == pytest.approx(math.sqrt(5) * 6 / 2)


@pytest.mark.parametrize("theta", [1.0, 0.5])
def test_legt_reconstructs_a_polynomial_over_its_window(theta):
    """Started from the exact coefficients, the LegT ODE keeps the projection of a cubic exactly,
    and the reconstruction covers [t - θ, t] (longssm's window convention)."""
    poly = lambda t: 1 + 0.5 * torch.as_tensor(t, dtype=F64) - 0.3 * torch.as_tensor(t, dtype=F64) ** 3
    n = 6
    c = rk4("legt", n, theta, poly, 1.0, 1.6, project_window("legt", n, theta, poly, 1.0))
    ages = torch.linspace(0, theta, 9, dtype=F64)
    assert_close(hippo.reconstruct("legt", n, theta, c, ages), poly(1.6 - ages), atol=1e-8, rtol=0,
                 name="reconstruction")


def test_lagt_is_exact_for_polynomials():
    """LagT's ODE has no approximation: the projection of a polynomial under e^{-a} stays exact."""
    poly = lambda t: 1 + 0.5 * torch.as_tensor(t, dtype=F64) - 0.3 * torch.as_tensor(t, dtype=F64) ** 3
    y, w = (torch.tensor(v) for v in np.polynomial.laguerre.laggauss(40))
    proj = lambda t: (hippo._laguerre(6, y) * poly(t - y) * w).sum(-1)
    c = rk4("lagt", 6, 1.0, poly, 1.0, 2.0, proj(1.0))
    assert_close(c, proj(2.0), atol=1e-9, rtol=0, name="lagt state")
    ages = torch.linspace(0, 3, 7, dtype=F64)
    assert_close(hippo.reconstruct("lagt", 6, 1.0, c, ages), poly(2.0 - ages), atol=1e-9, rtol=0)
    assert float(hippo.derivative_readout("lagt", 6, 1.0) @ c) == pytest.approx(0.5 - 0.9 * 4, abs=1e-8)


def test_new_bases_shapes_and_stability():
    A, B = hippo.glagt(5, 0.0)
    assert_close(B, hippo.lagt(5)[1], name="glagt alpha=0 is lagt")
    assert float(hippo.glagt(4, 0.5)[1][2]) == pytest.approx(math.gamma(3.5) / (2 * math.gamma(1.5)))
    legsd, _ = hippo.legsd(8)
    eig = torch.linalg.eigvals(legsd)
    assert_close(eig.real, torch.full((8,), -0.5, dtype=F64), name="legs-d eigenvalues")
    lam = torch.sort(eig.imag[eig.imag > 0]).values
    assert_close(lam, torch.sort(hippo.diag_init("legs", 4).imag).values, name="legs-d = S4D-LegS")
    foud, _ = hippo.foud(5)
    assert torch.linalg.eigvals(foud).real.max() == pytest.approx(-0.5)
    for name in ("lagt", "glagt", "legsd", "foud"):
        A, B = hippo.transition(name, 6)
        assert A.shape == (6, 6) and B.shape == (6,)


def test_prophecy_error_decreases_with_N():
    dt = 0.01
    t = torch.arange(0, 6, dt, dtype=F64)
    u = torch.exp(-0.2 * t) * torch.cos(2.0 * t)
    errors = []
    for n in (2, 4, 8, 16):
        pred = hippo.prophecy("legt", n, 1.0, dt).forecast(u)[:-1]
        errors.append(float((pred[150:] - u[151:]).abs().mean()))
    persistence = float((u[150:-1] - u[151:]).abs().mean())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * persistence, (errors, persistence)


def test_bad_measures_are_value_errors():
    with pytest.raises(ValueError, match="unknown measure"):
        hippo.derivative_readout("fout", 4, 1.0)
    with pytest.raises(ValueError, match="unknown measure"):
        hippo.basis("legsd", 4, 1.0, [0.0])
    with pytest.raises(ValueError, match="unknown measure"):
        hippo.prophecy("legx", 4, 1.0, 0.1)
    with pytest.raises(ValueError, match="dt"):
        hippo.prophecy("legt", 4, 1.0, 0.0)
