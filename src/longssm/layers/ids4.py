"""IDS4: a dense input-dependent linear recurrence (Merrill, Petty & Sabharwal, 2024, "The Illusion
of State in State-Space Models"), a state-tracking control for the capability suite.

Per step the transition is a dense N×N matrix computed from the input:
    A_t = act(W_0 + Σ_d x_{t,d} W_d)      W_d (N, N) for d = 1..H, W_0 (N, N) a bias
    h_t = A_t h_{t-1} + B x_t,   y_t = C h_t + D ⊙ x_t
Unlike a diagonal SSM, products of such A_t can represent non-commutative state updates (e.g. the
permutations of S_5), which is what the control is for.

``act`` (option): ``softmax`` (default, stable for language modelling with a carried state: each column of A_t is a softmax over its rows, so A_t is
column-stochastic, ‖A_t‖₁ = 1: no exponential growth, but the sum of the state's entries is never
forgotten, Σ_i h_t,i = Σ_i h_t-1,i + Σ_i (B x_t)_i, so the state can grow linearly with length),
``tanh`` (entries in (-1, 1); can grow exponentially with length), or ``identity`` (A_t linear
in x_t, the paper's unnormalised form). The state-tracking control of the capability suite is
``act=identity, init=identity``: it learns A5 in one layer where the defaults do not; with a
carried state in language-model training it diverges (tests/train/test_families.py), hence the
defaults.

Forms: ``forward`` is the sequential reference (a loop over time applying the precomputed A_t);
``step`` one step. There is no chunked form: a chunk would multiply dense N×N matrices (O(N³) per
step against O(N²) for the loop), so the loop is also the fastest form at these sizes.

Glossary (paper symbol -> code name, shape):
    H   d_model                  N   d_state
    W_d W (H, N, N)              W_0  W0 (N, N)
    B   B (N, H)                 C    C (H, N)          D   D (H,)
    h_t IDS4State.ssm (batch, N)
Init (option ``init``): ``identity``: every A_t starts near the identity, so the state
is kept and gradients reach back through time from the first step: W0 = α I (softmax: α = log(N-1)
+ 3, a diagonal weight of e³/(e³+1) ≈ 0.95; tanh: α = 2, tanh 2 ≈ 0.96; identity: α = 1) and
W ~ N(0, 1/H²) (input-dependent part of each entry of order 1/√H at unit-RMS inputs).
``uniform`` (default, the first version): W ~ N(0, 1/(H N)), W0 = 0, so a softmax A_t starts near the
uniform matrix 11ᵀ/N, a rank-one map that erases the state except its sum at every step (tanh and
identity: A_t near 0, the state is forgotten); the capability suite measured that this init does
not learn the group word problems (docs/tasks.md). Both: B ~ N(0, 1/H), C ~ N(0, 1/N), D = 1.

A permutation matrix is column stochastic, so every act can represent one (softmax only in the
limit of large logits): with A(g) = P_g and B x(g) = P_g v − v, the recurrence from h_0 = 0 gives
h_t = P_{g_t}⋯P_{g_1} v − v, the running product applied to v (tests/layers/test_ids4.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from longssm.layers.base import check_input, check_state, tag_ssm_param

ACTIVATIONS = ("softmax", "tanh", "identity")
INITS = ("identity", "uniform")


class IDS4State(NamedTuple):
    """IDS4 layer state."""

    ssm: torch.Tensor
    """(batch, N) the hidden state h_t."""


def ids4_activation(pre: torch.Tensor, act: str) -> torch.Tensor:
    """A_t from its pre-activation (..., N, N): column softmax, tanh or identity."""
    if act == "softmax":
        return torch.softmax(pre, dim=-2)
    if act == "tanh":
        return torch.tanh(pre)
    return pre


def identity_logit(act: str, n: int) -> float:
    """α of the ``identity`` init W0 = α I: A_t ≈ 0.95 I (softmax, tanh) or I (identity act)."""
    if act == "softmax":
        return math.log(max(n - 1, 1)) + 3.0
    return 2.0 if act == "tanh" else 1.0


class IDS4(nn.Module):
    """IDS4 mixer: ``forward(x, state=None) -> (y, IDS4State)``, x and y (batch, time, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, act: str = "softmax",
                 init: str = "uniform") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"IDS4: act must be one of {list(ACTIVATIONS)}, got {act!r}")
        if init not in INITS:
            raise ValueError(f"IDS4: init must be one of {list(INITS)}, got {init!r}")
        if not isinstance(d_state, int) or d_state < 1:
            raise ValueError(f"IDS4: d_state must be a positive integer, got {d_state!r}")
        H, N = d_model, d_state
        self.d_model, self.d_state, self.act, self.init = H, N, act, init
        w_std, diag = (1 / H, identity_logit(act, N)) if init == "identity" else (
            1 / math.sqrt(H * N), 0.0)
        self.W = tag_ssm_param(nn.Parameter(torch.randn(H, N, N) * w_std))
        self.W0 = tag_ssm_param(nn.Parameter(diag * torch.eye(N)))
        self.B = nn.Parameter(torch.randn(N, H) / math.sqrt(H))
        self.C = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.D = tag_ssm_param(nn.Parameter(torch.ones(H)))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, act={self.act}, init={self.init}"

    def transitions(self, x: torch.Tensor) -> torch.Tensor:
        """A_t for every step: x (..., H) -> (..., N, N)."""
        pre = torch.einsum("...d,dij->...ij", x, self.W.to(x.dtype)) + self.W0.to(x.dtype)
        return ids4_activation(pre, self.act)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> IDS4State:
        """Zeros (batch, N)."""
        device = self.D.device if device is None else device
        dtype = self.D.dtype if dtype is None else dtype
        return IDS4State(torch.zeros(batch_size, self.d_state, device=device, dtype=dtype))

    def _h0(self, state, x: torch.Tensor) -> torch.Tensor:
        if state is None:
            return x.new_zeros(x.shape[0], self.d_state)
        check_state(state, self.initial_state(x.shape[0], x.device, x.dtype), "IDS4")
        return state.ssm.to(x.dtype)

    def forward(self, x: torch.Tensor, state: IDS4State | None = None) -> tuple[torch.Tensor, IDS4State]:
        """Args: x (batch, T, H); state or None. Returns (y (batch, T, H), IDS4State)."""
        check_input(x, self.d_model)
        h = self._h0(state, x)  # (B, N)
        A = self.transitions(x)  # (B, T, N, N)
        u = x @ self.B.to(x.dtype).T  # (B, T, N)
        hs = []
        for t in range(x.shape[1]):
            h = (A[:, t] @ h[..., None])[..., 0] + u[:, t]  # (B, N)
            hs.append(h)
        h_all = torch.stack(hs, 1) if hs else x.new_zeros(x.shape[0], 0, self.d_state)
        y = h_all @ self.C.to(x.dtype).T + self.D.to(x.dtype) * x  # (B, T, H)
        return y, IDS4State(h)

    def step(self, x_t: torch.Tensor, state: IDS4State | None) -> tuple[torch.Tensor, IDS4State]:
        """Args: x_t (batch, H); state or None. Returns (y_t (batch, H), IDS4State)."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        h = self._h0(state, x_t)  # (B, N)
        A = self.transitions(x_t)  # (B, N, N)
        h = (A @ h[..., None])[..., 0] + x_t @ self.B.to(x_t.dtype).T  # (B, N)
        y = h @ self.C.to(x_t.dtype).T + self.D.to(x_t.dtype) * x_t  # (B, H)
        return y, IDS4State(h)
