"""StableSSM reparameterisations of a continuous-time eigenvalue's real part (Wang & Li, 2023).

A diagonal SSM's transition is stable when every continuous eigenvalue has a negative real part.
Instead of training that real part λ directly, a layer trains a raw parameter w and computes
λ = f(w) with a map f whose image lies in λ < 0. The choice of f changes the gradient dλ/dw and
so how the eigenvalues move during training; StableSSM shows that "best" keeps the gradient scale
bounded as λ approaches 0 (long memory), where "exp" and "softplus" do not.

Glossary (paper symbol -> code name):
    w                   raw parameter (the ``nn.Parameter`` a layer stores)
    λ = f(w) < 0        ``eigen_real(w, kind, b)``
    f⁻¹(λ)              ``eigen_real_inverse(lam, kind, b)`` (used at initialisation)
    b (of "best")       ``b`` = ``ModelConfig.eigen_param_b``
    ε (clip of direct)  ``eps`` (``DIRECT_EPS`` = 1e-4)

Maps (``kind``):
    direct    λ = min(w, −ε)        (clipped at use; the gradient is 0 where the clip is active)
    exp       λ = −exp(w)
    softplus  λ = −log(1 + exp(w))
    best      λ = −1 / (w² + b)     (image [−1/b, 0): an initial |λ| > 1/b is an error)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EIGEN_PARAMS = ("direct", "exp", "softplus", "best")
DIRECT_EPS = 1e-4


def check_eigen_param(kind: str, b: float = 0.5) -> None:
    """Raise a ValueError unless ``kind`` is a known map and ``b`` a positive number."""
    if kind not in EIGEN_PARAMS:
        raise ValueError(f"eigen_param must be one of {', '.join(EIGEN_PARAMS)}, got {kind!r}")
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
        raise ValueError(f"eigen_param_b must be a positive number, got {b!r}")


def eigen_real(w: torch.Tensor, kind: str, b: float = 0.5, eps: float = DIRECT_EPS) -> torch.Tensor:
    """λ = f(w) < 0, elementwise.

    Args:
        w: raw parameter, any shape.
        kind: one of ``EIGEN_PARAMS``.
        b: offset of "best" (λ >= −1/b).
        eps: "direct" clips λ to <= −eps.

    Returns:
        λ with w's shape and dtype.
    """
    if kind == "direct":
        return w.clamp(max=-eps)
    if kind == "exp":
        return -torch.exp(w)
    if kind == "softplus":
        return -F.softplus(w)
    if kind == "best":
        return -1.0 / (w * w + b)
    check_eigen_param(kind, b)
    raise AssertionError("unreachable")


def eigen_real_inverse(lam: torch.Tensor, kind: str, b: float = 0.5) -> torch.Tensor:
    """w = f⁻¹(λ) for λ < 0, so that ``eigen_real(w, kind, b) == lam`` (up to rounding).

    Args:
        lam: target real parts, all < 0, any shape.
        kind: one of ``EIGEN_PARAMS``.
        b: offset of "best".

    Returns:
        w with lam's shape and dtype.

    Raises:
        ValueError: some λ >= 0, or ("best") some |λ| > 1/b, which the map cannot reach.
    """
    check_eigen_param(kind, b)
    # Models built on the meta device (shape-only, for conversions) have no values to check.
    checked = not lam.is_meta
    if checked and not bool((lam < 0).all()):
        raise ValueError(f"eigenvalue real parts must be < 0, got max {lam.max().item():.3g}")
    mu = -lam  # (...,) > 0
    if kind == "direct":
        return lam.clone(memory_format=torch.contiguous_format)
    if kind == "exp":
        return torch.log(mu)
    if kind == "softplus":
        # log(exp(μ) - 1) written as μ + log(1 - exp(-μ)): no overflow for large μ.
        return mu + torch.log(-torch.expm1(-mu))
    largest = mu.max().item() if checked and mu.numel() else 0.0
    if largest > 1.0 / b * (1 + 1e-12):
        raise ValueError(
            f"eigen_param 'best' with b={b} reaches only -1/b = {-1.0 / b:.4g} <= λ < 0, but the "
            f"initialisation needs λ = {-largest:.4g}; set eigen_param_b <= {1.0 / largest:.4g}"
        )
    return torch.sqrt((1.0 / mu - b).clamp(min=0.0))


def describe(kind: str, b: float = 0.5) -> str:
    """The map as a formula, for logs and reprs."""
    formulas = {
        "direct": "λ = min(w, -eps)",
        "exp": "λ = -exp(w)",
        "softplus": "λ = -log(1 + exp(w))",
        "best": f"λ = -1/(w² + {b:g})",
    }
    check_eigen_param(kind, b)
    return formulas[kind]
