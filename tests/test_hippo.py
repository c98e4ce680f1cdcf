"""HiPPO matrices against element-by-element closed forms; NPLR and diagonal inits."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close
from longssm import hippo

SIZES = [1, 2, 3, 8, 17]


def legs_loop(n):
    A = torch.zeros(n, n, dtype=torch.float64)
    B = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        B[i] = math.sqrt(2 * i + 1)
        for k in range(n):
            if i > k:
                A[i, k] = -math.sqrt(2 * i + 1) * math.sqrt(2 * k + 1)
            elif i == k:
                A[i, k] = -(i + 1)
    return A, B


def legt_loop(n):
    A = torch.zeros(n, n, dtype=torch.float64)
    B = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        B[i] = math.sqrt(2 * i + 1)
        for k in range(n):
            scale = math.sqrt((2 * i + 1) * (2 * k + 1))
            A[i, k] = -scale if i >= k else -((-1) ** (i - k)) * scale
    return A, B


def fout_loop(n):
    """Basis [1, cos 2πs, sin 2πs, cos 4πs, sin 4πs, ...] on a sliding unit window."""
    b = [math.sqrt(2.0)] + [2.0 if j % 2 == 1 else 0.0 for j in range(1, n)]
    A = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(n):
            A[i, k] = -b[i] * b[k]
            if i % 2 == 0 and i > 0 and k == i - 1:
                A[i, k] += 2 * math.pi * (i // 2)
            if k % 2 == 0 and k > 0 and i == k - 1:
                A[i, k] -= 2 * math.pi * (k // 2)
    return A, math.sqrt(2.0) * torch.tensor(b, dtype=torch.float64)


LOOPS = {"legs": legs_loop, "legt": legt_loop, "fout": fout_loop}


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("measure", sorted(LOOPS))
def test_transition_matches_closed_form(measure, n):
    A, B = hippo.transition(measure, n)
    A_ref, B_ref = LOOPS[measure](n)
    assert A.shape == (n, n) and B.shape == (n,)
    assert_close(A, A_ref, name=f"{measure} A")
    assert_close(B, B_ref, name=f"{measure} B")


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("measure", sorted(LOOPS))
def test_transition_is_stable(measure, n):
    A, _ = hippo.transition(measure, n)
    max_re = torch.linalg.eigvals(A).real.max().item()
    # FouT with an even size keeps one marginal (zero) eigenvalue, see hippo.fout
    marginal = measure == "fout" and n % 2 == 0
    assert max_re <= 1e-9 if marginal else max_re < -1e-3, max_re


def test_unknown_measure_and_bad_size():
    with pytest.raises(ValueError, match="legs"):
        hippo.transition("legx", 4)
    with pytest.raises(ValueError, match="positive"):
        hippo.legs(0)
    with pytest.raises(ValueError, match="even"):
        hippo.hippo_n_half(5)
    with pytest.raises(ValueError, match="lin"):
        hippo.diag_init("nope", 4)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16, 33], ids=lambda n: f"N{n}")
def test_nplr_reconstructs_legs(n):
    Lambda, P, B, V = hippo.nplr_legs(n)
    A, B_ref = hippo.legs(n)
    eye = torch.eye(n, dtype=torch.complex128)
    assert_close(V.conj().T @ V, eye, name="V unitary")
    recon = V @ torch.diag(Lambda) @ V.conj().T - torch.outer(P, P).to(torch.complex128)
    assert_close(recon, A.to(torch.complex128), name="V Λ V* - P P^T")
    assert_close(B, B_ref, name="B")
    assert_close(Lambda.real, torch.full((n,), -0.5, dtype=torch.float64), name="Re Λ")
    for i in range(n):
        assert_close(P[i], torch.tensor(math.sqrt(i + 0.5), dtype=torch.float64), name=f"P[{i}]")


@pytest.mark.parametrize("n_modes", [1, 4, 16], ids=lambda n: f"modes{n}")
def test_s4d_legs_eigenvalues_are_normal_part_eigenvalues(n_modes):
    n = 2 * n_modes
    A, _ = hippo.legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    eig = torch.linalg.eigvals(A + torch.outer(P, P))
    positive = eig[eig.imag > 0]
    positive = positive[torch.argsort(positive.imag)]
    lam = hippo.diag_init("legs", n_modes)
    assert lam.shape == (n_modes,) and lam.dtype == torch.complex128
    assert_close(lam, positive, atol=1e-9, rtol=1e-9, name="S4D-LegS eigenvalues")
    assert_close(lam.real, torch.full((n_modes,), -0.5, dtype=torch.float64), name="Re")
    assert bool((torch.diff(lam.imag) > 0).all())


@pytest.mark.parametrize("n_modes", [1, 3, 8], ids=lambda n: f"modes{n}")
def test_s4d_legs_B_is_projected(n_modes):
    """V* B for the kept modes; with the conjugate half the diagonal system equals LegS's normal
    part: its impulse response C (V Λ V*)^k B matches 2 Re(Σ_kept C V λ^k V* B) for real C."""
    n = 2 * n_modes
    Lambda, P, B, V = hippo.nplr_legs(n)
    lam, V_half = hippo.hippo_n_half(n)
    B_t = hippo.s4d_legs_B(n_modes)
    assert_close(B_t, V_half.conj().T @ B.to(torch.complex128), name="V* B")
    normal = (V @ torch.diag(Lambda) @ V.conj().T).real
    c = torch.randn(n, dtype=torch.float64)
    C_t = c.to(torch.complex128) @ V_half  # (n_modes,)
    for k in range(4):
        full = c @ torch.linalg.matrix_power(normal, k) @ B
        diag = 2 * (C_t * lam**k * B_t).sum().real
        assert_close(diag, full, atol=1e-9, rtol=1e-9, name=f"kernel power {k}")


@pytest.mark.parametrize("n_modes", [1, 4, 9], ids=lambda n: f"modes{n}")
def test_closed_form_diag_inits(n_modes):
    lin, inv, real = (hippo.diag_init(k, n_modes) for k in ("lin", "inv", "real"))
    for i in range(n_modes):
        assert lin[i] == complex(-0.5, math.pi * i)
        want_inv = complex(-0.5, n_modes / math.pi * (n_modes / (2 * i + 1) - 1))
        assert abs(inv[i] - want_inv) < 1e-12
        assert real[i] == complex(-(i + 1), 0.0)
    for kind in hippo.DIAG_INITS:
        lam = hippo.diag_init(kind, n_modes)
        assert lam.shape == (n_modes,) and bool((lam.real < 0).all()), kind
