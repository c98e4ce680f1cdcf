"""HiPPO-Prophecy at CPU scale: a fixed-weight SSM (``longssm.hippo.prophecy``) forecasting
u_{k+1} from u_0 .. u_k for smooth signals, against the persistence forecast u_{k+1} = u_k.

Signals (each replicate draws its own phase or initial condition from ``seed``):
    damped   u = e^{-0.1 t} cos(2 t + φ)                       (a damped oscillator)
    vdp      x of Van der Pol, x'' - (1 - x²) x' + x = 0, / 2  (a limit cycle)
    lorenz   x of Lorenz (σ 10, ρ 28, β 8/3), / 20             (chaotic)
The ODEs are integrated by RK4 with step 1e-3 and sampled every Δ. Errors are root mean squares
over the steps after the first window θ (the memory is full); each (N, Δ) reports the mean over
replicates and a 95% t-interval.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from longssm import hippo

SIGNALS = ("damped", "vdp", "lorenz")
FINE_STEP = 1e-3


def _rk4(f, y0: np.ndarray, n_steps: int, h: float, every: int) -> np.ndarray:
    y, out = y0.astype(np.float64), []
    for i in range(n_steps):
        if i % every == 0:
            out.append(y.copy())
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return np.array(out)


def make_signal(name: str, dt: float, duration: float, seed: int) -> np.ndarray:
    """Samples u_k = u(k Δ), k < duration / Δ, of signal ``name`` (replicate ``seed``)."""
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; valid: {', '.join(SIGNALS)}")
    rng = np.random.default_rng(seed)
    n = int(round(duration / dt))
    if name == "damped":
        t = np.arange(n) * dt
        return np.exp(-0.1 * t) * np.cos(2 * t + rng.uniform(0, 2 * math.pi))
    every = max(1, int(round(dt / FINE_STEP)))
    if name == "vdp":
        f = lambda y: np.array([y[1], (1 - y[0] ** 2) * y[1] - y[0]])
        y0, scale = rng.uniform(-2, 2, 2), 0.5
    else:
        f = lambda y: np.array([10 * (y[1] - y[0]), y[0] * (28 - y[2]) - y[1], y[0] * y[1] - 8 / 3 * y[2]])
        y0, scale = rng.uniform(-10, 10, 3) + np.array([0, 0, 25]), 1 / 20
    return scale * _rk4(f, y0, n * every, dt / every, every)[:n, 0]


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (normal quantile 1.96 above 30 replicates)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean, mean
    quant = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    half = quant.get(len(v), 2.09 if len(v) <= 20 else 2.05 if len(v) <= 30 else 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def forecast_errors(signal: str, sizes, dts, theta: float = 1.0, measure: str = "legt",
                    replicates: int = 8, duration: float = 12.0, progress=None) -> list[dict]:
    """One row per (Δ, N): RMSE of the forecaster and of persistence, with 95% intervals."""
    for n in sizes:
        hippo.derivative_readout(measure, n, theta)  # validates measure, N, θ before any work
    rows = []
    for dt in dts:
        if not 0 < dt < theta:
            raise ValueError(f"dt must lie in (0, theta={theta}), got {dt}")
        series = [torch.from_numpy(make_signal(signal, dt, duration, seed)) for seed in range(replicates)]
        burn = int(math.ceil(theta / dt))
        target = [u[burn + 1 :] for u in series]
        persist = [float(((u[burn:-1] - y) ** 2).mean().sqrt()) for u, y in zip(series, target)]
        for n in sizes:
            model = hippo.prophecy(measure, n, theta, dt)
            errs = [float(((model.forecast(u)[burn:-1] - y) ** 2).mean().sqrt()) for u, y in zip(series, target)]
            ratio = [e / p for e, p in zip(errs, persist)]
            rows.append(dict(
                signal=signal, measure=measure, theta=theta, dt=dt, N=n, replicates=replicates,
                rmse=_t_interval(errs), persistence_rmse=_t_interval(persist), ratio=_t_interval(ratio),
            ))
            if progress is not None:
                progress.update(1)
    return rows
