"""S5: one multi-input multi-output complex diagonal SSM shared by all H channels.

The real state of size P is diagonalised, x = V x̃; its eigenvalues come in conjugate pairs, so
only the P/2 modes with Im λ > 0 are kept and the output takes 2 Re (the conjugate half contributes
the complex conjugate). With per-mode timescales Δ (P/2,):
    zoh:       λ̄ = exp(Δλ),                    B̄ = (λ̄ - 1)/λ · B̃
    bilinear:  λ̄ = (1 + Δλ/2) / (1 - Δλ/2),    B̄ = Δ / (1 - Δλ/2) · B̃
    h_t = λ̄ ⊙ h_{t-1} + B̄ u_t,   y_t = 2 Re(C̃ h_t) + D ⊙ u_t,   out_t = act(y_t)
with act (option ``activation``, lindermanlab/S5's names): gelu: GELU(y); half_glu1:
g ⊙ σ(W₂ g) with g = GELU(y); half_glu2: y ⊙ σ(W₂ GELU(y)); full_glu: W₁ g ⊙ σ(W₂ g).
Training runs the chunked scan ``ops.diag_scan``; ``step`` is one recurrence step.

Init: ``init="hippo-n"`` takes Λ, V from the normal part of HiPPO-LegS of size P;
``init="block"`` uses ``blocks`` copies of HiPPO-N of size P/blocks (block-diagonal V).
B (P, H) and C (H, P) are drawn and projected: B̃ = V⁻¹ B = V* B (V is unitary), C̃ = C V,
restricted to the kept modes. ``b_init="normal"`` (ours) draws B real N(0, 1/H);
``b_init="lecun"`` (the S5 code's) draws it real lecun-normal (truncated at 2σ, variance 1/P).
``c_init="normal"`` (ours) draws C real N(0, 1/P); ``c_init="trunc_normal"`` (the S5 code's
"trunc_standard_normal") draws C complex, real and imaginary parts lecun-normal (variance 1/P). With ``clip_eigs`` (default on) Re λ is clamped to <= -1e-4 at
forward time, which keeps |λ̄| < 1 and so the scan bounded at any length.

Glossary (paper symbol -> code name, shape):
    H   d_model                     P   d_state (n_modes = P/2 kept complex modes)
    Λ   Lambda_re + i Lambda_im     (n_modes,)
    Δ   exp(log_dt)                 (n_modes,)
    B̃   B (real view)               (n_modes, H, 2)
    C̃   C (real view)               (H, n_modes, 2)
    D   D                           (H,)
    x̃   S5State.ssm                 (batch, n_modes) complex

Options (``ModelConfig.mixer_options``): ``init`` hippo-n|block (default hippo-n), ``blocks``
(default 4, used by init=block; P must be divisible by 2*blocks), ``discretization`` zoh|bilinear
(default zoh), ``clip_eigs`` (default True), ``dt_min`` / ``dt_max`` (default 1e-3 / 0.1),
``chunk_size`` of the scan (default 32), ``activation`` gelu|half_glu1|half_glu2|full_glu (default
gelu), ``b_init`` normal|lecun, ``c_init`` normal|trunc_normal (default normal / normal),
``step_rescale`` (Δ multiplied by it, default 1; may be set to a (T,) tensor of per-step factors
for ``forward`` at evaluation: a time-varying recurrence), ``smr`` (taps of the State Memory Replay
gate on the input, ``layers/smr.py``; default 0; with it the state is ``S5SMRState(ssm, conv)``).
The mixer registry's preset ``official`` (``mixer_options={"preset": "official"}``) sets
lindermanlab/S5's defaults. ``ModelConfig.expand`` and ``d_conv`` are not used.
``eigen_param`` picks the StableSSM map Re Λ = f(w) (``longssm.reparam``; ModelConfig.eigen_param,
constructor default "direct" as in the S5 paper): "direct" stores w as Lambda_re (clamped only
under ``clip_eigs``), the others as Lambda_re_<map>, negative by construction, so ``clip_eigs``
has no effect there. The initial Λ is the same under every map.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm import hippo
from longssm.layers.base import add_offset, check_input, check_state, empty_sequence, tag_ssm_param
from longssm.layers.s4d import (
    REAL_OF_COMPLEX,
    check_step_rescale,
    complex_dtype_for,
    log_uniform_dt,
    rescale_for,
    time_varying_scan,
)
from longssm.layers.smr import SMRGate, check_smr
from longssm.ops.diag_scan import diag_scan, matmul_complex_real, matmul_re
from longssm.reparam import check_eigen_param, eigen_real, eigen_real_inverse

INITS = ("hippo-n", "block")
DISCRETIZATIONS = ("zoh", "bilinear")
ACTIVATIONS = ("gelu", "half_glu1", "half_glu2", "full_glu")
B_INITS = ("normal", "lecun")
C_INITS = ("normal", "trunc_normal")
# std of a standard normal truncated to [-2, 2]; dividing by it restores unit variance
TRUNC_STD = 0.87962566103423978
CLIP_RE_MAX = -1e-4
# Stored name of Re Λ's raw parameter per StableSSM map; "direct" keeps the original Lambda_re.
LAMBDA_RE_PARAM_NAMES = {
    "direct": "Lambda_re",
    "exp": "Lambda_re_exp",
    "softplus": "Lambda_re_softplus",
    "best": "Lambda_re_best",
}


class S5State(NamedTuple):
    """S5 layer state."""

    ssm: torch.Tensor
    """(batch, P/2) complex: complex64 for float32 inputs, complex128 for float64."""


class S5SMRState(NamedTuple):
    """S5 layer state with an SMR gate (``smr`` > 0)."""

    ssm: torch.Tensor
    """(batch, P/2) complex."""
    conv: torch.Tensor
    """(batch, H, smr - 1) the SMR gate's input history, oldest first."""


def lecun_normal(*shape: int, fan_in: int) -> torch.Tensor:
    """float64 normal truncated at ±2σ, scaled to variance exactly 1/fan_in (JAX's lecun_normal)."""
    std = 1.0 / math.sqrt(fan_in) / TRUNC_STD
    out = torch.empty(*shape, dtype=torch.float64)
    return nn.init.trunc_normal_(out, std=std, a=-2 * std, b=2 * std)


def s5_input_output(H: int, P: int, b_init: str, c_init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unprojected B (P, H) and C (H, P), complex128, drawn by ``b_init`` and ``c_init``."""
    if b_init == "normal":
        B = torch.randn(P, H, dtype=torch.float64) / math.sqrt(H)  # (P, H)
    else:
        B = lecun_normal(P, H, fan_in=P)  # (P, H)
    if c_init == "normal":
        C = (torch.randn(H, P, dtype=torch.float64) / math.sqrt(P)).to(torch.complex128)  # (H, P)
    else:
        C = torch.complex(lecun_normal(H, P, fan_in=P), lecun_normal(H, P, fan_in=P))  # (H, P)
    return B.to(torch.complex128), C


def s5_eigen_init(n_state: int, init: str, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Λ (n_state/2,) and V (n_state, n_state/2) complex128 for ``hippo-n`` or ``block``."""
    if init == "hippo-n":
        return hippo.hippo_n_half(n_state)
    if not isinstance(blocks, int) or blocks < 1 or n_state % (2 * blocks):
        raise ValueError(
            f"S5: blocks must be a positive integer with d_state divisible by 2*blocks, "
            f"got blocks={blocks!r}, d_state={n_state}"
        )
    size = n_state // blocks
    lam_b, V_b = hippo.hippo_n_half(size)  # (size/2,), (size, size/2)
    return lam_b.repeat(blocks), torch.block_diag(*([V_b] * blocks))


class S5(nn.Module):
    """S5 mixer: ``forward(x, state=None) -> (y, S5State)``, x and y (batch, time, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "hippo-n",
        blocks: int = 4,
        discretization: str = "zoh",
        clip_eigs: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk_size: int = 32,
        eigen_param: str = "direct",
        eigen_param_b: float = 0.5,
        activation: str = "gelu",
        b_init: str = "normal",
        c_init: str = "normal",
        step_rescale: float = 1.0,
        smr: int = 0,
    ) -> None:
        super().__init__()
        for name, value, valid in (
            ("activation", activation, ACTIVATIONS),
            ("b_init", b_init, B_INITS),
            ("c_init", c_init, C_INITS),
        ):
            if value not in valid:
                raise ValueError(f"S5: {name} must be one of {list(valid)}, got {value!r}")
        check_step_rescale(step_rescale, "S5")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S5: d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        if init not in INITS:
            raise ValueError(f"S5: init must be one of {list(INITS)}, got {init!r}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"S5: discretization must be one of {list(DISCRETIZATIONS)}, got {discretization!r}"
            )
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"S5: chunk_size must be a positive integer, got {chunk_size!r}")
        self.d_model, self.d_state, self.n_modes = d_model, d_state, d_state // 2
        self.init, self.discretization = init, discretization
        self.clip_eigs, self.chunk_size = bool(clip_eigs), chunk_size
        self.activation, self.step_rescale = activation, step_rescale
        self.smr = check_smr(smr, "S5")
        H, P = d_model, d_state

        lam, V = s5_eigen_init(P, init, blocks)  # (n,), (P, n)
        B, C = s5_input_output(H, P, b_init, c_init)  # (P, H), (H, P)
        B_t = V.conj().T @ B  # (n, H)
        C_t = C @ V  # (H, n)
        dtype = torch.get_default_dtype()
        check_eigen_param(eigen_param, eigen_param_b)
        self.eigen_param, self.eigen_param_b = eigen_param, eigen_param_b
        w_re = eigen_real_inverse(lam.real, eigen_param, eigen_param_b)  # (n,)
        self.register_parameter(
            LAMBDA_RE_PARAM_NAMES[eigen_param], tag_ssm_param(nn.Parameter(w_re.to(dtype)))
        )
        self.Lambda_im = tag_ssm_param(nn.Parameter(lam.imag.clone().to(dtype)))
        self.log_dt = tag_ssm_param(nn.Parameter(log_uniform_dt(self.n_modes, dt_min, dt_max).to(dtype)))
        self.B = tag_ssm_param(nn.Parameter(torch.view_as_real(B_t).to(dtype)))
        self.C = nn.Parameter(torch.view_as_real(C_t).to(dtype))
        self.D = tag_ssm_param(nn.Parameter(torch.randn(H, dtype=dtype)))
        # created last and only when asked for, so the default layer draws the same numbers
        self.out1 = nn.Linear(H, H) if activation == "full_glu" else None
        self.out2 = nn.Linear(H, H) if activation != "gelu" else None
        self.smr_gate = SMRGate(H, self.smr) if self.smr else None

    @property
    def Lambda_re_raw(self) -> nn.Parameter:
        """The stored parameter w of Re Λ (Lambda_re under "direct"), (P/2,)."""
        return getattr(self, LAMBDA_RE_PARAM_NAMES[self.eigen_param])

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, init={self.init}, "
            f"discretization={self.discretization}, clip_eigs={self.clip_eigs}, "
            f"activation={self.activation}, smr={self.smr}"
        )

    def eigenvalues(self) -> torch.Tensor:
        """Continuous-time Λ (P/2,) complex, real part clamped to <= -1e-4 under ``clip_eigs``."""
        w = self.Lambda_re_raw  # (n,)
        if self.eigen_param == "direct" and not self.clip_eigs:
            re = w
        else:
            re = eigen_real(w, self.eigen_param, self.eigen_param_b, eps=-CLIP_RE_MAX)  # (n,)
        return torch.complex(re, self.Lambda_im)

    def discretize(
        self, cdtype: torch.dtype, rescale: torch.Tensor | float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (λ̄ (P/2,), B̄ (P/2, H), C̃ (H, P/2)) in ``cdtype``, Δ = exp(log_dt) · rescale;
        for a (T,) ``rescale`` λ̄ is (T, P/2) and B̄ (T, P/2, H), one per step."""
        lam = self.eigenvalues()  # (n,)
        dt = torch.exp(self.log_dt)  # (n,)
        if isinstance(rescale, torch.Tensor):
            dt = rescale.to(dt)[:, None] * dt  # (T, n)
        elif rescale != 1:
            dt = dt * rescale  # (n,)
        B_t = torch.view_as_complex(self.B)  # (n, H)
        if self.discretization == "zoh":
            lam_bar = torch.exp(dt * lam)  # (n,) or (T, n)
            gain = (lam_bar - 1) / lam  # (n,) or (T, n)
        else:
            denom = 1 - dt * lam / 2  # (n,) or (T, n)
            lam_bar = (1 + dt * lam / 2) / denom  # (n,) or (T, n)
            gain = dt / denom  # (n,) or (T, n)
        B_bar = gain[..., None] * B_t  # (n, H) or (T, n, H)
        C_t = torch.view_as_complex(self.C)  # (H, n)
        return lam_bar.to(cdtype), B_bar.to(cdtype), C_t.to(cdtype)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> S5State | S5SMRState:
        """Zeros (batch, P/2) (and the SMR history (batch, H, smr-1) with ``smr`` > 0)."""
        device = self.D.device if device is None else device
        real = self.D.dtype if dtype is None else dtype
        ssm = torch.zeros(batch_size, self.n_modes, dtype=complex_dtype_for(real), device=device)
        if self.smr_gate is None:
            return S5State(ssm)
        real = REAL_OF_COMPLEX.get(real, real)
        width = self.smr_gate.width
        return S5SMRState(ssm, torch.zeros(batch_size, self.d_model, width, dtype=real, device=device))

    def _state_tensors(self, state, batch: int, x: torch.Tensor):
        """(h0 or None, SMR history or None) from ``state``, checked against the zero state."""
        if state is None:
            return None, None
        check_state(state, self.initial_state(batch, x.device, x.dtype), "S5")
        history = state.conv if self.smr_gate is not None else None
        return state.ssm.to(complex_dtype_for(x.dtype)), history

    def _pack(self, h: torch.Tensor, history) -> S5State | S5SMRState:
        return S5State(h) if self.smr_gate is None else S5SMRState(h, history)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        """The output nonlinearity ``activation`` on y (..., H)."""
        g = F.gelu(y)  # (..., H)
        if self.activation == "gelu":
            return g
        if self.activation == "half_glu1":
            return g * torch.sigmoid(self.out2(g))
        if self.activation == "half_glu2":
            return y * torch.sigmoid(self.out2(g))
        return self.out1(g) * torch.sigmoid(self.out2(g))

    def forward(
        self, x: torch.Tensor, state: S5State | S5SMRState | None = None
    ) -> tuple[torch.Tensor, S5State | S5SMRState]:
        """Args: x (batch, T, H); state or None. Returns (y (batch, T, H), state)."""
        return self.forward_offset(x, state)

    def step(
        self, x_t: torch.Tensor, state: S5State | S5SMRState | None
    ) -> tuple[torch.Tensor, S5State | S5SMRState]:
        """Args: x_t (batch, H); state or None. Returns (y_t (batch, H), state)."""
        return self.step_offset(x_t, state)

    def forward_offset(
        self, x: torch.Tensor, state: S5State | S5SMRState | None = None, offset=None
    ) -> tuple[torch.Tensor, S5State | S5SMRState]:
        """``forward`` with offset(C) added to y before the output nonlinearity (the readout
        offset of ``layers.base``; the state adapters' extension point)."""
        check_input(x, self.d_model)
        h0, history = self._state_tensors(state, x.shape[0], x)
        if x.shape[1] == 0:
            return empty_sequence(self, x, state)
        if self.smr_gate is not None:
            x, history = self.smr_gate(x, history)  # (B, T, H), (B, H, m-1)
        cdtype = complex_dtype_for(x.dtype)
        rescale = rescale_for(self.step_rescale, x.shape[1], "S5")
        lam_bar, B_bar, C_t = self.discretize(cdtype, rescale)
        real_dtype = torch.promote_types(x.dtype, torch.float32)
        if isinstance(rescale, torch.Tensor):
            v = torch.einsum("tnh,bth->btn", B_bar, x.to(cdtype))  # (B, T, n)
            h_all, h = time_varying_scan(lam_bar, v, h0)
        else:
            v = matmul_complex_real(B_bar, x.to(real_dtype).transpose(1, 2)).transpose(1, 2)
            h_all, h = diag_scan(v, lam_bar, h0, True, chunk_size=self.chunk_size)  # (B, T, n)
        y = 2 * matmul_re(h_all, C_t.T)  # (B, T, H)
        y = y.to(x.dtype) + self.D.to(x.dtype) * x  # (B, T, H)
        y = add_offset(y, offset, C_t)  # (B, T, H)
        return self._activate(y), self._pack(h, history)

    def step_offset(
        self, x_t: torch.Tensor, state: S5State | S5SMRState | None, offset=None
    ) -> tuple[torch.Tensor, S5State | S5SMRState]:
        """``step`` with offset(C) added to y_t before the output nonlinearity."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        batch = x_t.shape[0]
        h0, history = self._state_tensors(state, batch, x_t)
        if self.smr_gate is not None:
            x_t, history = self.smr_gate.step(x_t, history)  # (B, H), (B, H, m-1)
        if isinstance(self.step_rescale, torch.Tensor):
            raise ValueError("S5: step() needs a scalar step_rescale")
        cdtype = complex_dtype_for(x_t.dtype)
        lam_bar, B_bar, C_t = self.discretize(cdtype, self.step_rescale)
        h = x_t.to(cdtype) @ B_bar.T  # (B, n)
        if h0 is not None:
            h = h + lam_bar * h0  # (B, n)
        y = 2 * (h @ C_t.T).real  # (B, H)
        y = y.to(x_t.dtype) + self.D.to(x_t.dtype) * x_t  # (B, H)
        y = add_offset(y, offset, C_t)  # (B, H)
        return self._activate(y), self._pack(h, history)
