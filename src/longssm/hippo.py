"""HiPPO transition matrices, the NPLR form of LegS, and the diagonal (S4D / S5) initialisations.

Sign convention: every matrix here is for the continuous system ``x'(t) = A x(t) + B u(t)`` with
``A`` stable (eigenvalues with non-positive real part), i.e. the minus sign of the HiPPO paper's
``x' = -A x + B u`` is already folded into ``A``. All functions compute in float64 / complex128 on
the CPU; callers cast.

Glossary (paper symbol -> code name):
    N           ``n`` / ``n_state``: the HiPPO state size (polynomial order)
    A, B        ``A`` (N, N), ``B`` (N,) of a HiPPO measure (LegS, LegT, FouT)
    V Λ V*      eigen-decomposition of the normal part of LegS: ``V`` (N, N) unitary, ``Lambda`` (N,)
    P, Q        low-rank correction of LegS; here Q = P, so ``A = V diag(Lambda) V* - P P^T``
    Ã = A + P Pᵀ the "HiPPO-N" normal matrix: ``-1/2 I`` plus a real skew-symmetric matrix
    B̃ = V* B    ``B`` projected on the eigenvectors (S4D-LegS / S5 input matrix)

Diagonal inits return ``n_modes`` complex eigenvalues, the half with positive imaginary part of a
conjugate-pair set of ``2 * n_modes`` eigenvalues (the other half is their conjugate and is
accounted for by taking ``2 * Re(...)`` of the output). In the S4D closed forms below, ``N`` means
``n_modes`` (the number of kept modes), as in the S4D paper's code, and ``n = 0 .. n_modes-1``:
    S4D-LegS  eigenvalues of the LegS normal part of size 2*n_modes with Im > 0 (all Re = -1/2)
    S4D-Lin   -1/2 + i pi n
    S4D-Inv   -1/2 + i (N/pi) (N/(2n+1) - 1)
    S4D-Real  -(n + 1)           (imaginary part 0)
and the further variants of "How to Train Your HiPPO" (Gu et al., 2022), same conventions:
    S4D-Inv2  -1/2 + i (N/pi) (N/(n+1) - 1)
    S4D-Quad  -1/2 + i (1/pi) (2n+1)^2
``diag_b_init`` gives the input vectors B of that paper's ablations (constant, random,
alternating, unit-cw, unit-ccw, and the projected LegS B).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

DIAG_INITS = ("legs", "lin", "inv", "real", "inv2", "quad")
B_INITS = ("legs", "constant", "random", "alternating", "unit-cw", "unit-ccw")


def _check_size(n: int, name: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def legs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS (scaled Legendre measure).

    ``A[i, k] = -sqrt(2i+1) sqrt(2k+1)`` for i > k, ``-(i+1)`` for i == k, 0 above the diagonal;
    ``B[i] = sqrt(2i+1)``.

    Returns:
        A: (n, n) float64; B: (n,) float64.
    """
    _check_size(n)
    q = torch.arange(n, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)  # (n,)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(q + 1)  # (n, n)
    return A, r.clone()


def legt(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegT (translated Legendre measure on a unit window), in its normalised form.

    ``A[i, k] = -sqrt(2i+1) sqrt(2k+1)`` for i >= k and ``-(-1)^(i-k) sqrt(2i+1) sqrt(2k+1)`` for
    i < k; ``B[i] = sqrt(2i+1)``. (The LMU matrix is this one after a diagonal change of basis.)

    Returns:
        A: (n, n) float64; B: (n,) float64.
    """
    _check_size(n)
    q = torch.arange(n, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)  # (n,)
    row, col = q[:, None], q[None, :]
    # (-1)^(i-k) as a float: +1 for even differences, -1 for odd ones
    alternating = 1.0 - 2.0 * torch.remainder(row - col, 2)  # (n, n)
    sign = torch.where(row >= col, torch.ones_like(alternating), alternating)  # (n, n)
    A = -sign * r[:, None] * r[None, :]  # (n, n)
    return A, r.clone()


def fout(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-FouT (truncated Fourier basis on a unit sliding window).

    State layout: index 0 is the constant function, then index ``2m-1`` / ``2m`` hold the cosine /
    sine coefficient of frequency ``m = 1, 2, ...`` (an even ``n`` ends with a lone cosine).
    ``A = 2 pi K - b b^T`` with ``K[2m, 2m-1] = m``, ``K[2m-1, 2m] = -m`` (rotation of each
    frequency pair) and ``b[0] = sqrt(2)``, ``b[2m-1] = 2``, ``b[2m] = 0`` (the rank-one term
    forgets the signal leaving the window); ``B = sqrt(2) b``. For odd ``n`` every eigenvalue has
    a negative real part; an even ``n`` leaves the last cosine without its sine partner and one
    eigenvalue at 0 (marginally stable).

    Returns:
        A: (n, n) float64; B: (n,) float64.
    """
    _check_size(n)
    idx = torch.arange(n)
    is_cos = (idx % 2 == 1) & (idx > 0)  # (n,)
    b = torch.where(is_cos, 2.0, 0.0).to(torch.float64)  # (n,)
    b[0] = math.sqrt(2.0)
    K = torch.zeros(n, n, dtype=torch.float64)  # (n, n)
    for sin_idx in range(2, n, 2):
        freq = sin_idx // 2
        K[sin_idx, sin_idx - 1] = freq
        K[sin_idx - 1, sin_idx] = -freq
    A = 2 * math.pi * K - b[:, None] * b[None, :]  # (n, n)
    return A, math.sqrt(2.0) * b


TRANSITIONS = {"legs": legs, "legt": legt, "fout": fout}


def transition(measure: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of a HiPPO measure: one of ``legs``, ``legt``, ``fout``."""
    if measure not in TRANSITIONS:
        raise ValueError(f"unknown HiPPO measure {measure!r}; valid: {sorted(TRANSITIONS)}")
    return TRANSITIONS[measure](n)


class NPLR(NamedTuple):
    """Normal-plus-low-rank form ``A = V diag(Lambda) V* - P P^T`` (Q = P for LegS)."""

    Lambda: torch.Tensor
    """(N,) complex128 eigenvalues of the normal part, real part -1/2, sorted by imaginary part."""
    P: torch.Tensor
    """(N,) float64 low-rank factor, ``P[i] = sqrt(i + 1/2)``."""
    B: torch.Tensor
    """(N,) float64 LegS input vector (unprojected)."""
    V: torch.Tensor
    """(N, N) complex128 unitary eigenvectors (columns) of the normal part."""


def nplr_legs(n: int) -> NPLR:
    """NPLR decomposition of HiPPO-LegS.

    ``A + P P^T = -1/2 I + S`` with ``S`` real skew-symmetric, so the normal part's eigenvalues are
    ``-1/2 + i w`` where ``-i S`` (Hermitian) has eigenvalues ``w`` and eigenvectors ``V``.
    """
    A, B = legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)  # (n,)
    normal = A + P[:, None] * P[None, :]  # (n, n)
    skew = normal + 0.5 * torch.eye(n, dtype=torch.float64)  # (n, n)
    # -i S is Hermitian: eigh gives real w (ascending) and a unitary V with S V = V diag(i w)
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    Lambda = torch.complex(torch.full_like(w, -0.5), w)  # (n,)
    return NPLR(Lambda=Lambda, P=P, B=B, V=V)


def hippo_n_half(n_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positive-imaginary half of the LegS normal part ("HiPPO-N") of even size ``n_state``.

    Returns:
        Lambda: (n_state/2,) complex128 eigenvalues with Im > 0, ascending imaginary part.
        V: (n_state, n_state/2) complex128 the matching eigenvector columns.
    """
    _check_size(n_state, "n_state")
    if n_state % 2:
        raise ValueError(f"n_state must be even (conjugate pairs), got {n_state}")
    Lambda, _, _, V = nplr_legs(n_state)
    # eigh sorts ascending and the spectrum is symmetric about 0 with no zero for even sizes
    keep = slice(n_state // 2, n_state)
    if not bool((Lambda[keep].imag > 0).all()):
        raise RuntimeError(f"LegS normal part of size {n_state} has a real eigenvalue")
    return Lambda[keep], V[:, keep]


def s4d_legs_B(n_modes: int) -> torch.Tensor:
    """S4D-LegS input vector: LegS ``B`` projected on the kept eigenvectors, ``V* B``.

    Returns:
        (n_modes,) complex128, matching ``diag_init("legs", n_modes)`` element by element.
    """
    _check_size(n_modes, "n_modes")
    _, V = hippo_n_half(2 * n_modes)
    _, B = legs(2 * n_modes)
    return V.conj().T @ B.to(torch.complex128)  # (n_modes,)


def diag_init(kind: str, n_modes: int) -> torch.Tensor:
    """Diagonal S4D initialisation: ``n_modes`` complex eigenvalues (see the module docstring).

    Args:
        kind: ``legs`` | ``lin`` | ``inv`` | ``real`` | ``inv2`` | ``quad``.
        n_modes: number of kept modes (half of the conjugate-pair state size).
    Returns:
        (n_modes,) complex128 eigenvalues, all with negative real part.
    """
    _check_size(n_modes, "n_modes")
    n = torch.arange(n_modes, dtype=torch.float64)
    half = torch.full_like(n, -0.5)
    if kind == "legs":
        return hippo_n_half(2 * n_modes)[0]
    if kind == "lin":
        return torch.complex(half, math.pi * n)
    if kind == "inv":
        return torch.complex(half, (n_modes / math.pi) * (n_modes / (2 * n + 1) - 1))
    if kind == "real":
        return torch.complex(-(n + 1), torch.zeros_like(n))
    if kind == "inv2":
        return torch.complex(half, (n_modes / math.pi) * (n_modes / (n + 1) - 1))
    if kind == "quad":
        return torch.complex(half, (2 * n + 1) ** 2 / math.pi)
    raise ValueError(f"unknown diagonal init {kind!r}; valid: {list(DIAG_INITS)}")


def diag_b_init(kind: str, n_modes: int) -> torch.Tensor:
    """Input vector B of a diagonal SSM (How to Train Your HiPPO's ablations), ``n_modes`` long.

    ``legs``: the projected LegS B (``s4d_legs_B``); ``constant``: ones; ``random``: standard
    real normal (draws from torch's global generator); ``alternating``: 1, -1, 1, -1, ...;
    ``unit-cw`` / ``unit-ccw``: z^n with z = exp(-+2 pi i / (2 n_modes)), points on the unit
    circle turning clockwise / counter-clockwise.

    Returns:
        (n_modes,) complex128.
    """
    _check_size(n_modes, "n_modes")
    n = torch.arange(n_modes, dtype=torch.float64)
    if kind == "legs":
        return s4d_legs_B(n_modes)
    if kind == "constant":
        return torch.ones(n_modes, dtype=torch.complex128)
    if kind == "random":
        return torch.randn(n_modes, dtype=torch.float64).to(torch.complex128)
    if kind == "alternating":
        return (1.0 - 2.0 * torch.remainder(n, 2)).to(torch.complex128)
    if kind in ("unit-cw", "unit-ccw"):
        sign = -1.0 if kind == "unit-cw" else 1.0
        return torch.polar(torch.ones_like(n), sign * 2 * math.pi * n / (2 * n_modes))
    raise ValueError(f"unknown diagonal B init {kind!r}; valid: {list(B_INITS)}")
