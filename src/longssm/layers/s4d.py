"""S4D: H independent single-input single-output complex diagonal SSMs, one per channel.

Each channel h in 0..H-1 carries N/2 complex modes; with conjugate symmetry they stand for a real
system of state size N (y = 2 Re(C h)). Per channel, with ZOH discretisation:
    λ̄ = exp(Δ λ),   B̄ = (λ̄ - 1) / λ · B
    h_t = λ̄ ⊙ h_{t-1} + B̄ u_t,   y_t = 2 Re(Σ_n C_n h_{t,n}) + D u_t
    out_t = GLU(W · GELU(y_t))      (W: Linear(H, 2H); GLU halves it back to H)
``mode="conv"`` computes y as an FFT convolution plus the initial-state response
(``ops.diag_scan.s4d_conv``); ``mode="recurrent"`` as the chunked scan (``ops.diag_scan``). Both
give the same y and final state.

Glossary (paper symbol -> code name, shape):
    H        d_model (channels)                     N        d_state; n_modes = N/2 kept modes
    Δ        exp(log_dt)          (H,)              λ        -exp(A_log_re) + i A_im  (H, n_modes)
    B        B (real view)        (H, n_modes, 2)   C        C (real view)   (H, n_modes, 2)
    D        D                    (H,)              h        S4DState.ssm    (batch, H, n_modes)
Complex parameters are stored as real tensors with a trailing (re, im) axis so that optimisers and
checkpoints only ever see real tensors.

Options (``ModelConfig.mixer_options``): ``init`` legs|lin|inv|real (default legs; S4D-LegS uses
the projected LegS B, the others B = 1), ``mode`` conv|recurrent (default conv), ``dt_min`` /
``dt_max`` (log-uniform init range of Δ, default 1e-3 / 0.1), ``chunk_size`` of the recurrent scan
(default 32). ``ModelConfig.expand`` and ``d_conv`` are not used by S4D. ``ModelConfig.eigen_param``
picks the StableSSM map Re λ = f(w) (``longssm.reparam``): "exp" stores w as A_log_re (as above),
the others as A_re_<map>; the initial λ is the same under every map.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm import hippo
from longssm.layers.base import check_input, check_state, tag_ssm_param
from longssm.ops.diag_scan import diag_scan, s4d_conv
from longssm.reparam import check_eigen_param, eigen_real, eigen_real_inverse

MODES = ("conv", "recurrent")
# Stored name of Re λ's raw parameter per StableSSM map; "exp" keeps the original A_log_re.
A_RE_PARAM_NAMES = {
    "exp": "A_log_re",
    "direct": "A_re_direct",
    "softplus": "A_re_softplus",
    "best": "A_re_best",
}


class S4DState(NamedTuple):
    """S4D layer state."""

    ssm: torch.Tensor
    """(batch, H, N/2) complex: complex64 for float32 inputs, complex128 for float64."""


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64 (or complex128), complex64 for every narrower dtype."""
    if dtype in (torch.float64, torch.complex128):
        return torch.complex128
    return torch.complex64


def log_uniform_dt(size: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """log Δ with Δ ~ logU[dt_min, dt_max]; shape (size,)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(size, dtype=torch.float64)
    return u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


class S4D(nn.Module):
    """S4D mixer: ``forward(x, state=None) -> (y, S4DState)``, x and y (batch, time, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        mode: str = "conv",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_size: int = 32,
        eigen_param: str = "exp",
        eigen_param_b: float = 0.5,
    ) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S4D: d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        if init not in hippo.DIAG_INITS:
            raise ValueError(f"S4D: init must be one of {list(hippo.DIAG_INITS)}, got {init!r}")
        if mode not in MODES:
            raise ValueError(f"S4D: mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"S4D: chunk_size must be a positive integer, got {chunk_size!r}")
        self.d_model, self.d_state, self.n_modes = d_model, d_state, d_state // 2
        self.init, self.mode, self.chunk_size = init, mode, chunk_size
        H, n = d_model, self.n_modes

        lam = hippo.diag_init(init, n).expand(H, n)  # (H, n)
        B = hippo.s4d_legs_B(n) if init == "legs" else torch.ones(n, dtype=torch.complex128)
        C = torch.randn(H, n, dtype=torch.complex128)  # (H, n), E|C|^2 = 1
        dtype = torch.get_default_dtype()
        self.log_dt = tag_ssm_param(nn.Parameter(log_uniform_dt(H, dt_min, dt_max).to(dtype)))
        check_eigen_param(eigen_param, eigen_param_b)
        self.eigen_param, self.eigen_param_b = eigen_param, eigen_param_b
        w_re = eigen_real_inverse(lam.real, eigen_param, eigen_param_b)  # (H, n)
        self.register_parameter(
            A_RE_PARAM_NAMES[eigen_param], tag_ssm_param(nn.Parameter(w_re.to(dtype)))
        )
        self.A_im = tag_ssm_param(nn.Parameter(lam.imag.clone().to(dtype)))
        self.B = tag_ssm_param(nn.Parameter(torch.view_as_real(B.expand(H, n).clone()).to(dtype)))
        self.C = nn.Parameter(torch.view_as_real(C).to(dtype))
        self.D = tag_ssm_param(nn.Parameter(torch.randn(H, dtype=dtype)))
        self.out_proj = nn.Linear(H, 2 * H)

    @property
    def A_re_raw(self) -> nn.Parameter:
        """The stored parameter w of Re λ (A_log_re under "exp"), (H, N/2)."""
        return getattr(self, A_RE_PARAM_NAMES[self.eigen_param])

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, init={self.init}, mode={self.mode}"

    def eigenvalues(self) -> torch.Tensor:
        """Continuous-time λ = f(w) + i A_im (f = -exp for "exp"), (H, N/2) complex."""
        re = eigen_real(self.A_re_raw, self.eigen_param, self.eigen_param_b)  # (H, n)
        return torch.complex(re, self.A_im)

    def discretize(self, cdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: λ̄ = exp(Δλ), B̄ = (λ̄ - 1)/λ · B; returns (λ̄, B̄, C), each (H, N/2) in ``cdtype``."""
        lam = self.eigenvalues()  # (H, n)
        dt = torch.exp(self.log_dt)[:, None]  # (H, 1)
        lam_bar = torch.exp(dt * lam)  # (H, n)
        B_bar = (lam_bar - 1) / lam * torch.view_as_complex(self.B)  # (H, n)
        C = torch.view_as_complex(self.C)  # (H, n)
        return lam_bar.to(cdtype), B_bar.to(cdtype), C.to(cdtype)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> S4DState:
        """Zeros (batch, H, N/2); ``dtype`` is the real (or complex) dtype of the inputs."""
        device = self.D.device if device is None else device
        cdtype = complex_dtype_for(self.D.dtype if dtype is None else dtype)
        return S4DState(torch.zeros(batch_size, self.d_model, self.n_modes, dtype=cdtype, device=device))

    def _state_tensor(self, state, batch: int, x: torch.Tensor) -> torch.Tensor | None:
        if state is None:
            return None
        check_state(state, self.initial_state(batch, x.device, x.dtype), "S4D")
        return state.ssm.to(complex_dtype_for(x.dtype))

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        """GELU, then the GLU output mixing; (..., H) -> (..., H)."""
        return F.glu(self.out_proj(F.gelu(y)), dim=-1)

    def forward(self, x: torch.Tensor, state: S4DState | None = None) -> tuple[torch.Tensor, S4DState]:
        """Args: x (batch, T, H); state S4DState or None. Returns (y (batch, T, H), S4DState)."""
        check_input(x, self.d_model)
        batch = x.shape[0]
        h0 = self._state_tensor(state, batch, x)
        cdtype = complex_dtype_for(x.dtype)
        lam_bar, B_bar, C = self.discretize(cdtype)
        D = self.D.to(x.dtype)
        if self.mode == "conv":
            y, h = s4d_conv(x, lam_bar, B_bar, C, D, h0, output_final_state=True)  # (B, T, H)
        else:
            v = B_bar * x.to(cdtype)[..., None]  # (B, T, H, n)
            h_all, h = diag_scan(v, lam_bar, h0, True, chunk_size=self.chunk_size)
            y = 2 * (h_all * C).real.sum(-1) + D * x  # (B, T, H)
        return self._output(y.to(x.dtype)), S4DState(h)

    def step(self, x_t: torch.Tensor, state: S4DState | None) -> tuple[torch.Tensor, S4DState]:
        """Args: x_t (batch, H); state S4DState. Returns (y_t (batch, H), S4DState)."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        batch = x_t.shape[0]
        h0 = self._state_tensor(state, batch, x_t)
        cdtype = complex_dtype_for(x_t.dtype)
        lam_bar, B_bar, C = self.discretize(cdtype)
        h = B_bar * x_t.to(cdtype)[..., None]  # (B, H, n)
        if h0 is not None:
            h = h + lam_bar * h0  # (B, H, n)
        y = 2 * (C * h).sum(-1).real + self.D.to(x_t.dtype) * x_t  # (B, H)
        return self._output(y.to(x_t.dtype)), S4DState(h)
