"""S4D: H independent single-input single-output complex diagonal SSMs, one per channel.

Each channel h in 0..H-1 carries N/2 complex modes; with conjugate symmetry they stand for a real
system of state size N (y = 2 Re(C h)). Per channel, with ZOH discretisation:
    λ̄ = exp(Δ λ),   B̄ = (λ̄ - 1) / λ · B
    h_t = λ̄ ⊙ h_{t-1} + B̄ u_t,   y_t = 2 Re(Σ_n C_n h_{t,n}) + D u_t
    out_t = GLU(W · GELU(y_t))      (W: Linear(H, 2H); GLU halves it back to H)
``mode="auto"`` (the default) computes y and the final state by ``ops.diag_scan.s4d_scan``'s
"auto" path: the recurrence in fused numba kernels on the CPU (``s4d_scan_fused``), the FFT
convolution elsewhere or inside ``torch_forms()``; ``mode="conv"`` always by the FFT convolution
plus the initial-state response (``s4d_conv``); ``mode="recurrent"`` by the chunked scan
(``ops.diag_scan``). All give the same y and final state.

Glossary (paper symbol -> code name, shape):
    H        d_model (channels)                     N        d_state; n_modes = N/2 kept modes
    Δ        exp(log_dt)          (H,)              λ        -exp(A_log_re) + i A_im  (H, n_modes)
    B        B (real view)        (H, n_modes, 2)   C        C (real view)   (H, n_modes, 2)
    D        D                    (H,)              h        S4DState.ssm    (batch, H, n_modes)
Complex parameters are stored as real tensors with a trailing (re, im) axis so that optimisers and
checkpoints only ever see real tensors.

Options (``ModelConfig.mixer_options``): ``init`` legs|lin|inv|real|inv2|quad (default legs),
``b_init`` auto|legs|constant|random|alternating|unit-cw|unit-ccw (default auto: the projected
LegS B for init=legs, ones otherwise), ``b_scale`` (B multiplied by it, default 1; 0.5 is the S4D
paper's DPLR-matching S4D-LegS B), ``real_scale`` / ``imag_scale`` (Re λ and Im λ multiplied at
init, default 1), ``smr`` (taps of the State Memory Replay gate on the input, ``layers/smr.py``,
default 0 = none; with it the state is ``S4DSMRState(ssm, conv)``), ``step_rescale`` (Δ multiplied
by it, default 1; may be set to a (T,) tensor of per-step factors for ``forward`` at evaluation,
which then runs a time-varying recurrence), ``mode`` auto|conv|recurrent (default auto), ``dt_min`` /
``dt_max`` (log-uniform init range of Δ, default 1e-3 / 0.1), ``chunk_size`` of the recurrent scan
(default 32). ``ModelConfig.expand`` and ``d_conv`` are not used by S4D. ``ModelConfig.eigen_param``
picks the StableSSM map Re λ = f(w) (``longssm.reparam``): "exp" stores w as A_log_re (as above),
the others as A_re_<map>; the initial λ is the same under every map. ``clip_eigs`` (default true)
keeps "direct"'s clip Re λ <= −1e-4; false uses Re λ = w unclipped, so training may push an
eigenvalue to Re λ >= 0 (an unstable recurrence): only for the StableSSM experiment
(docs/tasks.md), which needs the direct map's failure to be visible.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm import hippo
from longssm.layers.base import add_offset, check_input, check_state, empty_sequence, tag_ssm_param
from longssm.layers.smr import SMRGate, check_smr
from longssm.ops.diag_scan import diag_scan, s4d_scan
from longssm.reparam import check_eigen_param, eigen_real, eigen_real_inverse

MODES = ("auto", "conv", "recurrent")
"""``auto``: ``s4d_scan(path="auto")`` (fused kernels on the CPU, else FFT); ``conv``: always the FFT
convolution (``s4d_conv``); ``recurrent``: the chunked scan (``diag_scan``)."""
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


class S4DSMRState(NamedTuple):
    """S4D layer state with an SMR gate (``smr`` > 0)."""

    ssm: torch.Tensor
    """(batch, H, N/2) complex."""
    conv: torch.Tensor
    """(batch, H, smr - 1) the SMR gate's input history, oldest first."""


REAL_OF_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64}


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


def check_step_rescale(value, layer: str) -> None:
    """A positive float, or a 1-D tensor of positive per-step factors; ValueError otherwise."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or not bool((value > 0).all()):
            raise ValueError(f"{layer}: a step_rescale tensor must be 1-D (T,) and positive")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{layer}: step_rescale must be a positive number, got {value!r}")


def rescale_for(value, T: int, layer: str) -> torch.Tensor | float:
    """``step_rescale`` for a segment of T steps: a float, or its (T,) tensor checked for length."""
    check_step_rescale(value, layer)
    if isinstance(value, torch.Tensor) and value.shape[0] != T:
        raise ValueError(f"{layer}: step_rescale has {value.shape[0]} steps, the input {T}")
    return value


def time_varying_scan(
    lam_bar: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = λ̄_t ⊙ h_{t-1} + v_t by a loop: lam_bar (T, *S), v (B, T, *S), h0 (B, *S) or None.

    Returns h_all (B, T, *S) and h_T. Used for per-step Δ (non-uniform sampling) at evaluation.
    """
    h = torch.zeros_like(v[:, 0]) if h0 is None else h0.to(v.dtype)  # (B, *S)
    hs = []
    for t in range(v.shape[1]):
        h = lam_bar[t] * h + v[:, t]  # (B, *S)
        hs.append(h)
    return torch.stack(hs, 1), h


class S4D(nn.Module):
    """S4D mixer: ``forward(x, state=None) -> (y, S4DState)``, x and y (batch, time, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        mode: str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_size: int = 32,
        eigen_param: str = "exp",
        eigen_param_b: float = 0.5,
        b_init: str = "auto",
        b_scale: float = 1.0,
        real_scale: float = 1.0,
        imag_scale: float = 1.0,
        smr: int = 0,
        step_rescale: float = 1.0,
        clip_eigs: bool = True,
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
        if b_init != "auto" and b_init not in hippo.B_INITS:
            raise ValueError(f"S4D: b_init must be auto or one of {list(hippo.B_INITS)}, got {b_init!r}")
        for name, value in (("b_scale", b_scale), ("real_scale", real_scale), ("imag_scale", imag_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"S4D: {name} must be a positive number, got {value!r}")
        check_step_rescale(step_rescale, "S4D")
        self.d_model, self.d_state, self.n_modes = d_model, d_state, d_state // 2
        self.init, self.mode, self.chunk_size = init, mode, chunk_size
        self.smr, self.step_rescale = check_smr(smr, "S4D"), step_rescale
        H, n = d_model, self.n_modes

        lam = hippo.diag_init(init, n)  # (n,)
        if real_scale != 1 or imag_scale != 1:
            lam = torch.complex(real_scale * lam.real, imag_scale * lam.imag)  # (n,)
        lam = lam.expand(H, n)  # (H, n)
        if b_init == "auto":
            b_init = "legs" if init == "legs" else "constant"
        B = hippo.diag_b_init(b_init, n)  # (n,)
        if b_scale != 1:
            B = b_scale * B  # (n,)
        C = torch.randn(H, n, dtype=torch.complex128)  # (H, n), E|C|^2 = 1
        dtype = torch.get_default_dtype()
        self.log_dt = tag_ssm_param(nn.Parameter(log_uniform_dt(H, dt_min, dt_max).to(dtype)))
        check_eigen_param(eigen_param, eigen_param_b)
        self.eigen_param, self.eigen_param_b = eigen_param, eigen_param_b
        self.clip_eigs = bool(clip_eigs)
        w_re = eigen_real_inverse(lam.real, eigen_param, eigen_param_b)  # (H, n)
        self.register_parameter(
            A_RE_PARAM_NAMES[eigen_param], tag_ssm_param(nn.Parameter(w_re.to(dtype)))
        )
        self.A_im = tag_ssm_param(nn.Parameter(lam.imag.clone().to(dtype)))
        self.B = tag_ssm_param(nn.Parameter(torch.view_as_real(B.expand(H, n).clone()).to(dtype)))
        self.C = nn.Parameter(torch.view_as_real(C).to(dtype))
        self.D = tag_ssm_param(nn.Parameter(torch.randn(H, dtype=dtype)))
        self.out_proj = nn.Linear(H, 2 * H)
        # created last, and only with smr > 0, so that the default layer draws the same numbers
        self.smr_gate = SMRGate(H, self.smr) if self.smr else None

    @property
    def A_re_raw(self) -> nn.Parameter:
        """The stored parameter w of Re λ (A_log_re under "exp"), (H, N/2)."""
        return getattr(self, A_RE_PARAM_NAMES[self.eigen_param])

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, init={self.init}, mode={self.mode}"

    def eigenvalues(self) -> torch.Tensor:
        """Continuous-time λ = f(w) + i A_im (f = -exp for "exp"), (H, N/2) complex; "direct"
        without ``clip_eigs`` is Re λ = w, unclipped."""
        if self.eigen_param == "direct" and not self.clip_eigs:
            return torch.complex(self.A_re_raw, self.A_im)
        re = eigen_real(self.A_re_raw, self.eigen_param, self.eigen_param_b)  # (H, n)
        return torch.complex(re, self.A_im)

    def discretize(
        self, cdtype: torch.dtype, rescale: torch.Tensor | float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: λ̄ = exp(Δλ), B̄ = (λ̄ - 1)/λ · B with Δ = exp(log_dt) · rescale.

        Returns (λ̄, B̄, C), each (H, N/2) in ``cdtype``; for a (T,) ``rescale`` λ̄ and B̄ are
        (T, H, N/2), one per step.
        """
        lam = self.eigenvalues()  # (H, n)
        dt = torch.exp(self.log_dt)[:, None]  # (H, 1)
        if isinstance(rescale, torch.Tensor):
            dt = rescale.to(dt)[:, None, None] * dt  # (T, H, 1)
        elif rescale != 1:
            dt = dt * rescale  # (H, 1)
        lam_bar = torch.exp(dt * lam)  # (H, n) or (T, H, n)
        B_bar = (lam_bar - 1) / lam * torch.view_as_complex(self.B)  # (H, n) or (T, H, n)
        C = torch.view_as_complex(self.C)  # (H, n)
        return lam_bar.to(cdtype), B_bar.to(cdtype), C.to(cdtype)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> S4DState | S4DSMRState:
        """Zeros (batch, H, N/2) (and the SMR history (batch, H, smr-1) with ``smr`` > 0)."""
        device = self.D.device if device is None else device
        real = self.D.dtype if dtype is None else dtype
        cdtype = complex_dtype_for(real)
        ssm = torch.zeros(batch_size, self.d_model, self.n_modes, dtype=cdtype, device=device)
        if self.smr_gate is None:
            return S4DState(ssm)
        real = REAL_OF_COMPLEX.get(real, real)
        width = self.smr_gate.width
        return S4DSMRState(ssm, torch.zeros(batch_size, self.d_model, width, dtype=real, device=device))

    def _state_tensors(self, state, batch: int, x: torch.Tensor):
        """(h0 or None, SMR history or None) from ``state``, checked against the zero state."""
        if state is None:
            return None, None
        check_state(state, self.initial_state(batch, x.device, x.dtype), "S4D")
        history = state.conv if self.smr_gate is not None else None
        return state.ssm.to(complex_dtype_for(x.dtype)), history

    def _pack(self, h: torch.Tensor, history) -> S4DState | S4DSMRState:
        return S4DState(h) if self.smr_gate is None else S4DSMRState(h, history)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        """GELU, then the GLU output mixing; (..., H) -> (..., H)."""
        return F.glu(self.out_proj(F.gelu(y)), dim=-1)

    def forward(
        self, x: torch.Tensor, state: S4DState | S4DSMRState | None = None
    ) -> tuple[torch.Tensor, S4DState | S4DSMRState]:
        """Args: x (batch, T, H); state or None. Returns (y (batch, T, H), state)."""
        return self.forward_offset(x, state)

    def step(
        self, x_t: torch.Tensor, state: S4DState | S4DSMRState | None
    ) -> tuple[torch.Tensor, S4DState | S4DSMRState]:
        """Args: x_t (batch, H); state or None. Returns (y_t (batch, H), state)."""
        return self.step_offset(x_t, state)

    def forward_offset(
        self, x: torch.Tensor, state: S4DState | S4DSMRState | None = None, offset=None
    ) -> tuple[torch.Tensor, S4DState | S4DSMRState]:
        """``forward`` with offset(C) added to y before the output nonlinearity (the readout
        offset of ``layers.base``; the state adapters' extension point)."""
        check_input(x, self.d_model)
        batch = x.shape[0]
        h0, history = self._state_tensors(state, batch, x)
        if x.shape[1] == 0:
            return empty_sequence(self, x, state)
        if self.smr_gate is not None:
            x, history = self.smr_gate(x, history)  # (B, T, H), (B, H, m-1)
        cdtype = complex_dtype_for(x.dtype)
        rescale = rescale_for(self.step_rescale, x.shape[1], "S4D")
        lam_bar, B_bar, C = self.discretize(cdtype, rescale)
        D = self.D.to(x.dtype)
        if isinstance(rescale, torch.Tensor):
            v = B_bar * x.to(cdtype)[..., None]  # (B, T, H, n)
            h_all, h = time_varying_scan(lam_bar, v, h0)
            y = 2 * (h_all * C).real.sum(-1) + D * x  # (B, T, H)
        elif self.mode in ("auto", "conv"):
            y, h = s4d_scan(x, lam_bar, B_bar, C, D, h0, True, path=self.mode)  # (B, T, H)
        else:
            v = B_bar * x.to(cdtype)[..., None]  # (B, T, H, n)
            h_all, h = diag_scan(v, lam_bar, h0, True, chunk_size=self.chunk_size)
            y = 2 * (h_all * C).real.sum(-1) + D * x  # (B, T, H)
        y = add_offset(y.to(x.dtype), offset, C)  # (B, T, H)
        return self._output(y), self._pack(h, history)

    def step_offset(
        self, x_t: torch.Tensor, state: S4DState | S4DSMRState | None, offset=None
    ) -> tuple[torch.Tensor, S4DState | S4DSMRState]:
        """``step`` with offset(C) added to y_t before the output nonlinearity."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        batch = x_t.shape[0]
        h0, history = self._state_tensors(state, batch, x_t)
        if self.smr_gate is not None:
            x_t, history = self.smr_gate.step(x_t, history)  # (B, H), (B, H, m-1)
        cdtype = complex_dtype_for(x_t.dtype)
        if isinstance(self.step_rescale, torch.Tensor):
            raise ValueError("S4D: step() needs a scalar step_rescale")
        lam_bar, B_bar, C = self.discretize(cdtype, self.step_rescale)
        h = B_bar * x_t.to(cdtype)[..., None]  # (B, H, n)
        if h0 is not None:
            h = h + lam_bar * h0  # (B, H, n)
        y = 2 * (C * h).sum(-1).real + self.D.to(x_t.dtype) * x_t  # (B, H)
        y = add_offset(y.to(x_t.dtype), offset, C)  # (B, H)
        return self._output(y), self._pack(h, history)
