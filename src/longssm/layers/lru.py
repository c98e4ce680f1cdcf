"""LRU: the Linear Recurrent Unit (Orvieto et al., 2023) with the longssm state protocol.

A complex diagonal linear recurrence trained directly in discrete time (no ODE, no
discretisation), with an exponential parameterisation of the eigenvalues and a normalisation γ
that keeps the state's variance independent of how close |Λ| is to 1:
    Λ = exp(-exp(ν) + i exp(θ))            (N,) complex, |Λ| < 1 for any ν, θ
    γ = sqrt(1 - |Λ|²)                     (N,) real, trained through log γ
    h_t = Λ ⊙ h_{t-1} + γ ⊙ (B x_t),   y_t = Re(C h_t) + D ⊙ x_t
    out_t = GLU(W · GELU(y_t))             (W: Linear(H, 2H); the paper's block nonlinearity)
Unlike S4D / S5 there is no conjugate pairing: N complex modes, y takes the real part once.

Init: |Λ| uniform on the ring r_min <= |Λ| <= r_max (sampled as |Λ|² ~ U[r_min², r_max²]),
arg Λ ~ U[0, max_phase]; B, C complex Gaussian with variance 1/H (B) and 1/N (C); D ~ N(0, 1);
log γ from the initial |Λ|.

Glossary (paper symbol -> code name, shape):
    H   d_model                     N   d_state (complex modes)
    ν   nu_log      (N,)            θ   theta_log   (N,)
    γ   exp(gamma_log) (N,)         D   D           (H,)
    B   B (real view) (N, H, 2)     C   C (real view) (H, N, 2)
    h   LRUState.ssm (batch, N) complex

The sequence form uses the chunked complex diagonal scan ``ops.diag_scan.diag_scan_chunk``;
``step`` applies one recurrence step. Options (``ModelConfig.mixer_options``): ``r_min``
(default 0), ``r_max`` (default 0.99), ``max_phase`` (default 2π), ``chunk_size`` (default 32).
``ModelConfig.expand``, ``d_conv`` and ``eigen_param`` are not used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm.layers.base import check_input, check_state, empty_sequence, tag_ssm_param
from longssm.layers.s4d import complex_dtype_for
from longssm.ops.diag_scan import diag_scan, matmul_complex_real, matmul_re


class LRUState(NamedTuple):
    """LRU layer state."""

    ssm: torch.Tensor
    """(batch, N) complex: complex64 for float32 inputs, complex128 for float64."""


class LRU(nn.Module):
    """LRU mixer: ``forward(x, state=None) -> (y, LRUState)``, x and y (batch, time, d_model).

    Args:
        d_model: channels H.
        d_state: complex modes N.
        r_min, r_max: initial |Λ| lies on the ring r_min <= |Λ| <= r_max (0 <= r_min < r_max < 1).
        max_phase: initial arg Λ ~ U[0, max_phase].
        chunk_size: chunk length of the diagonal scan.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        if not 0 <= r_min < r_max < 1:
            raise ValueError(f"LRU: need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if not max_phase > 0:
            raise ValueError(f"LRU: max_phase must be > 0, got {max_phase!r}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"LRU: chunk_size must be a positive integer, got {chunk_size!r}")
        self.d_model, self.d_state, self.chunk_size = d_model, d_state, chunk_size
        H, N = d_model, d_state
        u1 = torch.rand(N, dtype=torch.float64)
        u2 = torch.rand(N, dtype=torch.float64)
        # |Λ|² ~ U[r_min², r_max²] and |Λ| = exp(-exp(ν)), so ν = log(-log|Λ|²/2)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))  # (N,)
        # θ = max_phase * u2 may be 0 only with probability 0; the floor keeps log finite
        theta_log = torch.log((max_phase * u2).clamp(min=1e-12))  # (N,)
        modulus = torch.exp(-torch.exp(nu_log))  # (N,)
        gamma_log = 0.5 * torch.log1p(-(modulus**2))  # (N,)
        B = torch.complex(
            torch.randn(N, H, dtype=torch.float64), torch.randn(N, H, dtype=torch.float64)
        )
        C = torch.complex(
            torch.randn(H, N, dtype=torch.float64), torch.randn(H, N, dtype=torch.float64)
        )
        dtype = torch.get_default_dtype()
        self.nu_log = tag_ssm_param(nn.Parameter(nu_log.to(dtype)))
        self.theta_log = tag_ssm_param(nn.Parameter(theta_log.to(dtype)))
        self.gamma_log = tag_ssm_param(nn.Parameter(gamma_log.to(dtype)))
        # E|B_ij|² = 1/H, E|C_ij|² = 1/N (each of re, im carries half the variance)
        self.B = nn.Parameter(torch.view_as_real(B / math.sqrt(2 * H)).to(dtype))
        self.C = nn.Parameter(torch.view_as_real(C / math.sqrt(2 * N)).to(dtype))
        self.D = tag_ssm_param(nn.Parameter(torch.randn(H, dtype=dtype)))
        self.out_proj = nn.Linear(H, 2 * H)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}"

    def eigenvalues(self) -> torch.Tensor:
        """log Λ = -exp(ν) + i exp(θ), (N,) complex: Λ's continuous-time counterpart (Δ = 1)."""
        return torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))

    def transition(self, cdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (Λ (N,), γ B (N, H), C (H, N)) in ``cdtype``."""
        lam = torch.exp(self.eigenvalues())  # (N,)
        B = torch.exp(self.gamma_log)[:, None] * torch.view_as_complex(self.B)  # (N, H)
        C = torch.view_as_complex(self.C)  # (H, N)
        return lam.to(cdtype), B.to(cdtype), C.to(cdtype)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> LRUState:
        """Zeros (batch, N); ``dtype`` is the real (or complex) dtype of the inputs."""
        device = self.D.device if device is None else device
        cdtype = complex_dtype_for(self.D.dtype if dtype is None else dtype)
        return LRUState(torch.zeros(batch_size, self.d_state, dtype=cdtype, device=device))

    def _state_tensor(self, state, batch: int, x: torch.Tensor) -> torch.Tensor | None:
        if state is None:
            return None
        check_state(state, self.initial_state(batch, x.device, x.dtype), "LRU")
        return state.ssm.to(complex_dtype_for(x.dtype))

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        """GELU, then the GLU output mixing; (..., H) -> (..., H)."""
        return F.glu(self.out_proj(F.gelu(y)), dim=-1)

    def forward(
        self, x: torch.Tensor, state: LRUState | None = None
    ) -> tuple[torch.Tensor, LRUState]:
        """Args: x (batch, T, H); state LRUState or None. Returns (y (batch, T, H), LRUState)."""
        check_input(x, self.d_model)
        h0 = self._state_tensor(state, x.shape[0], x)
        if x.shape[1] == 0:
            return empty_sequence(self, x, state)
        cdtype = complex_dtype_for(x.dtype)
        lam, B, C = self.transition(cdtype)
        real_dtype = torch.promote_types(x.dtype, torch.float32)
        v = matmul_complex_real(B, x.to(real_dtype).transpose(1, 2)).transpose(1, 2)  # (B, T, N)
        h_all, h = diag_scan(v, lam, h0, True, chunk_size=self.chunk_size)  # (B, T, N)
        y = matmul_re(h_all, C.T)  # (B, T, H)
        y = y.to(x.dtype) + self.D.to(x.dtype) * x  # (B, T, H)
        return self._output(y), LRUState(h)

    def step(self, x_t: torch.Tensor, state: LRUState | None) -> tuple[torch.Tensor, LRUState]:
        """Args: x_t (batch, H); state LRUState. Returns (y_t (batch, H), LRUState)."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        h0 = self._state_tensor(state, x_t.shape[0], x_t)
        cdtype = complex_dtype_for(x_t.dtype)
        lam, B, C = self.transition(cdtype)
        h = x_t.to(cdtype) @ B.T  # (B, N)
        if h0 is not None:
            h = h + lam * h0  # (B, N)
        y = (h @ C.T).real  # (B, H)
        y = y.to(x_t.dtype) + self.D.to(x_t.dtype) * x_t  # (B, H)
        return self._output(y), LRUState(h)
