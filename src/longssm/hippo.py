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


def lagt(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LagT (Laguerre basis, exponentially decaying measure e^{-(t-x)} on x <= t).

    Derived from c_n(t) = ∫ u(x) L_n(t-x) e^{-(t-x)} dx with L_n(0) = 1 and L_n' = -Σ_{k<n} L_k:
    ``A[i, k] = -1`` for k <= i (0 above the diagonal), ``B = 1``.

    Returns:
        A: (n, n) float64; B: (n,) float64.
    """
    _check_size(n)
    return -torch.tril(torch.ones(n, n, dtype=torch.float64)), torch.ones(n, dtype=torch.float64)


def glagt(n: int, alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised LagT: the basis L_n^(α) (weight y^α e^{-y}), the input tilted by y^{-α}.

    c_n(t) = ∫ u(x) L_n^(α)(y) e^{-y} dx, y = t - x; with L_n^(α)(0) = binom(n+α, n) and
    (L_n^(α))' = -Σ_{k<n} L_k^(α): ``A`` as LagT, ``B[n] = binom(n+α, n)``. α = 0 is LagT.
    """
    _check_size(n)
    if not alpha >= 0:
        raise ValueError(f"glagt: alpha must be >= 0, got {alpha!r}")
    q = torch.arange(n, dtype=torch.float64)
    B = torch.exp(torch.lgamma(q + alpha + 1) - torch.lgamma(q + 1) - math.lgamma(alpha + 1))
    return lagt(n)[0], B


def legsd(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LegS-D: LegS without its low-rank term, the normal part ``A + P Pᵀ = -½ I + S``.

    Its eigen-decomposition is S4D-LegS (``diag_init("legs", n // 2)``); B is LegS's B.
    """
    A, B = legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)  # (n,)
    return A + P[:, None] * P[None, :], B


def foud(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FouD: FouT's rotations with the rank-one forgetting term replaced by a uniform -½ damping.

    ``A = 2 pi K - ½ I`` (the layout of ``fout``), ``B`` as FouT: the normal, diagonalisable
    counterpart of FouT as LegS-D is of LegS (complex eigenvalues -½ ± 2 pi i m, S4D-Lin's form with
    FouT's frequencies). This is longssm's definition; it keeps no exact window.
    """
    A, B = fout(n)
    b = B / math.sqrt(2.0)  # (n,)
    return A + b[:, None] * b[None, :] - 0.5 * torch.eye(n, dtype=torch.float64), B


TRANSITIONS = {
    "legs": legs, "legt": legt, "fout": fout, "lagt": lagt, "glagt": glagt, "legsd": legsd,
    "foud": foud,
}


def transition(measure: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of a HiPPO measure: one of ``TRANSITIONS`` (glagt with α = ½)."""
    if measure not in TRANSITIONS:
        raise ValueError(f"unknown HiPPO measure {measure!r}; valid: {sorted(TRANSITIONS)}")
    return TRANSITIONS[measure](n)


# Measures with a reconstruction: the state at time t holds coefficients of u over its recent past.
RECONSTRUCTIBLE = ("legt", "legs", "fout", "lagt", "glagt")


def _check_measure(measure: str, allowed: tuple[str, ...], what: str) -> None:
    if measure not in allowed:
        raise ValueError(f"unknown measure {measure!r} for {what}; valid: {', '.join(allowed)}")


def _legendre(n: int, x: torch.Tensor) -> torch.Tensor:
    """P_0 .. P_{n-1} at x (Bonnet's recursion): (n, len(x))."""
    P = [torch.ones_like(x), x.clone()][:n]
    for k in range(2, n):
        P.append(((2 * k - 1) * x * P[k - 1] - (k - 1) * P[k - 2]) / k)
    return torch.stack(P)


def _laguerre(n: int, y: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """L_0^(α) .. L_{n-1}^(α) at y: (n, len(y))."""
    L = [torch.ones_like(y), 1 + alpha - y][:n]
    for k in range(2, n):
        L.append(((2 * k - 1 + alpha - y) * L[k - 1] - (k - 1 + alpha) * L[k - 2]) / k)
    return torch.stack(L)


def basis(measure: str, n: int, theta: float, age, alpha: float = 0.5) -> torch.Tensor:
    """The reconstruction functions g_n at ``age`` a = t - x >= 0 (so u(t - a) ≈ Σ_n c_n g_n(a)).

    Window convention (longssm's, as the HiPPO 2020 paper): the state of ``legt(n)`` / ``fout(n)``
    driven by c' = (A c + B u) / θ covers [t - θ, t]; the plain matrices are θ = 1.
    (state-spaces/s4 halves LegT's (A, B) and so reconstructs over a window of 2.)
        legt, legs  g_n(a) = sqrt(2n+1) P_n(1 - 2a/θ)      (legs: θ = t, the whole history)
        fout        g_0 = 1, g_{2m-1} = sqrt2 cos(2 pi m a/θ), g_{2m} = sqrt2 sin(2 pi m a/θ); at the
                    window's two ends the series converges to their average (FouT's B = 2 g(0)
                    and its forgetting term -2 g(0) g(0)ᵀ come from that), so only the inside of
                    the window is reconstructed well
        lagt        g_n(a) = L_n(a/θ)                      (exponential measure, timescale θ)
        glagt       g_n(a) = (a/θ)^α L_n^(α)(a/θ) n! / Γ(n+α+1)
    Returns: (n, len(age)) float64.
    """
    _check_size(n)
    _check_measure(measure, RECONSTRUCTIBLE, "reconstruction")
    a = torch.as_tensor(age, dtype=torch.float64).reshape(-1) / theta
    q = torch.arange(n, dtype=torch.float64)[:, None]
    if measure in ("legt", "legs"):
        return torch.sqrt(2 * q + 1) * _legendre(n, 1 - 2 * a)
    if measure == "fout":
        m = torch.div(q + 1, 2, rounding_mode="floor")  # frequency of each row
        phase = 2 * math.pi * m * a
        g = torch.where(q % 2 == 1, torch.cos(phase), torch.sin(phase)) * math.sqrt(2.0)
        g[0] = 1.0
        return g
    if measure == "lagt":
        return _laguerre(n, a)
    norm = torch.exp(torch.lgamma(q + 1) - torch.lgamma(q + alpha + 1))
    return a**alpha * _laguerre(n, a, alpha) * norm


def reconstruct(measure: str, n: int, theta: float, states: torch.Tensor, age, alpha: float = 0.5) -> torch.Tensor:
    """u(t - a) ≈ Σ_n c_n g_n(a) for states (..., n) at the ages ``age``: (..., len(age))."""
    g = basis(measure, n, theta, age, alpha)  # (n, A)
    if states.shape[-1] != n:
        raise ValueError(f"states must have a last dimension of size N={n}, got {tuple(states.shape)}")
    return states.to(torch.float64) @ g


def derivative_readout(measure: str, n: int, theta: float) -> torch.Tensor:
    """C (n,) with û'(t) = C · c(t), the derivative of the reconstruction at the window end a = 0.

        legt, legs  C_n = sqrt(2n+1) n(n+1)/θ        (P_n'(1) = n(n+1)/2)
        lagt        C_n = n/θ                        (L_n'(0) = -n)
    FouT is left out: its reconstruction at the window end is the average of both ends.
    """
    _check_size(n)
    _check_measure(measure, ("legt", "legs", "lagt"), "derivative_readout")
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta!r}")
    q = torch.arange(n, dtype=torch.float64)
    if measure in ("legt", "legs"):
        return torch.sqrt(2 * q + 1) * q * (q + 1) / theta
    return q / theta


class Forecaster(NamedTuple):
    """A fixed-weight discrete SSM: c_k = Ad c_{k-1} + Bd u_k, û_{k+1} = u_k + C · c_k."""

    Ad: torch.Tensor
    """(N, N) float64."""
    Bd: torch.Tensor
    """(N,) float64."""
    C: torch.Tensor
    """(N,) float64: Δ times the derivative readout."""

    def forecast(self, u: torch.Tensor) -> torch.Tensor:
        """û_{k+1} for every k from u (..., K): (..., K), starting from the zero state."""
        u = u.to(torch.float64)
        c = u.new_zeros(*u.shape[:-1], self.Ad.shape[0])
        out = []
        for k in range(u.shape[-1]):
            c = c @ self.Ad.T + u[..., k, None] * self.Bd
            out.append(u[..., k] + c @ self.C)
        return torch.stack(out, dim=-1)


def prophecy(measure: str, n: int, theta: float, dt: float, method: str = "bilinear") -> Forecaster:
    """HiPPO-Prophecy: the one-step forecaster u_{k+1} ≈ u_k + Δ û'(t_k) of a smooth signal.

    The continuous memory c' = (A c + B u)/θ is discretised with step Δ = ``dt`` (``bilinear`` or
    ``zoh``), and the output reads the derivative of the reconstruction at the window end.
    """
    if method not in ("bilinear", "zoh"):
        raise ValueError(f"method must be bilinear or zoh, got {method!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    C = derivative_readout(measure, n, theta)
    A, B = transition(measure, n)
    A, B = A / theta, B / theta
    eye = torch.eye(n, dtype=torch.float64)
    if method == "bilinear":
        left = eye - dt / 2 * A
        Ad = torch.linalg.solve(left, eye + dt / 2 * A)
        Bd = torch.linalg.solve(left, dt * B)
    else:
        Ad = torch.linalg.matrix_exp(dt * A)
        Bd = torch.linalg.solve(A, (Ad - eye) @ B)
    return Forecaster(Ad, Bd, dt * C)


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
