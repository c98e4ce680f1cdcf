"""StableSSM linear functionals (Wang & Li, *StableSSM*): y_t = Σ_{s≤t} ρ(t − s) x_s.

Inputs x_s ~ N(0, 1) i.i.d. (scalar); the label at step t is the causal convolution of x with a
memory ρ sampled on the integer grid k = 0, 1, 2, …. Memories (our discretisation; the paper
states the shapes, the constants here are ours except the polynomial one):

    exp         ρ(k) = e^{−k/10}
    polynomial  ρ(k) = (1 + 0.1k)^{−1.1}          (StableSSM's slowly decaying target)
    sin         ρ(k) = sin(k/5) e^{−k/50}
    shift       ρ(k) = 1[k = 10]
    two-parts   ρ(k) = e^{−k/5} + ½·1[k = 20]
    airy        ρ(k) = Ai(k/10 − 6)               (oscillates, then decays super-exponentially)

The generator convolves by FFT (zero-padded to 2n, so there is no wrap-around); the tests compare
with the direct sum.
"""

from __future__ import annotations

import numpy as np
from scipy.special import airy

MEMORIES = ("exp", "polynomial", "sin", "shift", "two-parts", "airy")


def memory(kind: str, n: int) -> np.ndarray:
    """ρ(0..n-1) as float64."""
    k = np.arange(n, dtype=np.float64)
    if kind == "exp":
        return np.exp(-k / 10)
    if kind == "polynomial":
        return (1 + 0.1 * k) ** -1.1
    if kind == "sin":
        return np.sin(k / 5) * np.exp(-k / 50)
    if kind == "shift":
        return (k == 10).astype(np.float64)
    if kind == "two-parts":
        return np.exp(-k / 5) + 0.5 * (k == 20)
    if kind == "airy":
        return airy(k / 10 - 6)[0]
    raise ValueError(f"unknown memory {kind!r}; known: {', '.join(MEMORIES)}")


def convolve(x: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Causal convolution y_t = Σ_{s≤t} ρ(t−s) x_s along the last axis, by FFT. x (..., n)."""
    n = x.shape[-1]
    size = 2 * n
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rho[:n], size), size)
    return y[..., :n]


def sample(kind: str, batch: int, n: int, rng: np.random.Generator):
    """(inputs (B, n, 1) float32, targets (B, n, 1) float32)."""
    x = rng.normal(size=(batch, n))
    y = convolve(x, memory(kind, n))
    return x[..., None].astype(np.float32), y[..., None].astype(np.float32)
