"""SMR (State Memory Replay) under changed sampling steps: an ODE regression, one command.

    PYTHONPATH=src python docs/results/smr_ode.py            # writes smr_ode.json and smr_ode.md

Task: the driven damped oscillator x'' + 2ζω x' + ω² x = u(t) (ω = 2, ζ = 0.2), with u a sum of
four sines of random frequency (0.2..1.5 rad/s), amplitude and phase. The model sees u(t_k) and
predicts x(t_k) (targets by RK4 with 10 substeps per sample interval). Model: Linear(1→H) →
S4D or S5 layer (``smr`` = 0 or 4) → Linear(H→1), H = 16, d_state = 16, trained with Adam at step
Δ = 0.1 on windows of 12.8 s (128 samples). Test (same 12.8 s span, fresh signals) at Δ/2, 2Δ and
at jittered steps Δ·U[0.5, 1.5], two ways: "told" (the layer's ``step_rescale`` is set to the
true step / Δ, per step for the jitter) and "blind" (step_rescale stays 1: the model is not told).
Score: normalised MSE (MSE / Var x) on 64 test sequences; mean ± std over 3 seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5

OMEGA, ZETA, DT, SPAN = 2.0, 0.2, 0.1, 12.8
HERE = Path(__file__).parent


def signals(rng: np.random.Generator, n: int):
    """Parameters of n input signals u(t) = Σ a sin(f t + φ)."""
    return rng.uniform(0.2, 1.5, (n, 4)), rng.uniform(0.3, 1.0, (n, 4)), rng.uniform(0, 2 * np.pi, (n, 4))


def u_at(params, t: np.ndarray) -> np.ndarray:
    """u at times t (n, T) -> (n, T)."""
    f, a, p = params
    return (a[:, None] * np.sin(f[:, None] * t[..., None] + p[:, None])).sum(-1)


def solve(params, times: np.ndarray) -> np.ndarray:
    """x(t_k) (n, T) from rest at t = 0 by RK4, 10 substeps per interval; times (n, T)."""
    n, T = times.shape
    state = np.zeros((n, 2))
    out = np.empty((n, T))
    prev = np.zeros(n)

    def rhs(s, t):
        u = u_at(params, t[:, None])[:, 0]
        return np.stack([s[:, 1], u - 2 * ZETA * OMEGA * s[:, 1] - OMEGA**2 * s[:, 0]], 1)

    for k in range(T):
        h = (times[:, k] - prev) / 10
        t = prev.copy()
        for _ in range(10):
            k1 = rhs(state, t)
            k2 = rhs(state + h[:, None] / 2 * k1, t + h / 2)
            k3 = rhs(state + h[:, None] / 2 * k2, t + h / 2)
            k4 = rhs(state + h[:, None] * k3, t + h)
            state = state + h[:, None] / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t = t + h
        out[:, k], prev = state[:, 0], times[:, k]
    return out


def dataset(rng, n: int, steps: np.ndarray):
    """Inputs (n, T, 1), targets (n, T, 1) at times cumsum(steps) (T,) (shared across rows)."""
    times = np.broadcast_to(np.cumsum(steps), (n, steps.shape[0]))
    params = signals(rng, n)
    x = torch.tensor(u_at(params, times), dtype=torch.float32)[..., None]
    y = torch.tensor(solve(params, times), dtype=torch.float32)[..., None]
    return x, y


class Regressor(nn.Module):
    def __init__(self, family: str, smr: int):
        super().__init__()
        self.inp, self.out = nn.Linear(1, 16), nn.Linear(16, 1)
        if family == "s4d":
            self.ssm = S4D(16, 16, mode="recurrent", smr=smr)
        else:
            self.ssm = S5(16, 16, smr=smr)

    def forward(self, x):
        return self.out(self.ssm(self.inp(x))[0])


def train(family: str, smr: int, seed: int, steps: int = 400) -> Regressor:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Regressor(family, smr)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    T = round(SPAN / DT)
    x, y = dataset(rng, 512, np.full(T, DT))
    for _i in range(steps):
        idx = torch.randint(0, 512, (32,))
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def nmse(model: Regressor, x, y, rescale) -> float:
    model.ssm.step_rescale = rescale
    with torch.no_grad():
        err = ((model(x) - y) ** 2).mean() / y.var()
    model.ssm.step_rescale = 1.0
    return err.item()


def evaluate(model: Regressor, seed: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    T = round(SPAN / DT)
    settings = {
        "dt": np.full(T, DT),
        "dt/2": np.full(2 * T, DT / 2),
        "2dt": np.full(T // 2, 2 * DT),
        "jitter": DT * rng.uniform(0.5, 1.5, T),
    }
    out = {}
    for name, steps in settings.items():
        x, y = dataset(rng, 64, steps)
        told = torch.tensor(steps / DT, dtype=torch.float32)
        out[f"{name} told"] = nmse(model, x, y, told if name == "jitter" else float(told[0]))
        if name != "dt":
            out[f"{name} blind"] = nmse(model, x, y, 1.0)
    return out


def main(seeds=(0, 1, 2)) -> None:
    runs = []
    for family in ("s4d", "s5"):
        for smr in (0, 4):
            for seed in seeds:
                scores = evaluate(train(family, smr, seed), seed)
                runs.append({"family": family, "smr": smr, "seed": seed, **scores})
                print(family, smr, seed, {k: round(v, 4) for k, v in scores.items()}, flush=True)
    (HERE / "smr_ode.json").write_text(json.dumps(runs, indent=1))
    write_page(runs)


def write_page(runs: list[dict]) -> None:
    keys = [k for k in runs[0] if k not in ("family", "smr", "seed")]
    rows = ["| family | smr | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for family in ("s4d", "s5"):
        for smr in (0, 4):
            sel = [r for r in runs if r["family"] == family and r["smr"] == smr]
            cells = []
            for k in keys:
                v = np.array([r[k] for r in sel])
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1):.4f}")
            rows.append(f"| {family} | {smr} | " + " | ".join(cells) + " |")
    text = (HERE / "smr_ode.md").read_text() if (HERE / "smr_ode.md").exists() else ""
    head = text.split("<!-- table -->")[0] if "<!-- table -->" in text else "# SMR under changed sampling steps\n\n"
    tail = text.split("<!-- /table -->")[1] if "<!-- /table -->" in text else "\n"
    table = "<!-- table -->\n" + "\n".join(rows) + "\n<!-- /table -->"
    (HERE / "smr_ode.md").write_text(head + table + tail)


if __name__ == "__main__":
    main(tuple(int(s) for s in sys.argv[1:]) or (0, 1, 2))
