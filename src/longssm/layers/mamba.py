"""Mamba (Mamba-1, S6) mixer with the longssm state protocol.

Submodule and parameter names are those of transformers' ``MambaMixer`` (and ``mamba_ssm``), so
checkpoints convert by renaming only (see ``longssm.interop.hf_mamba``).

Glossary (paper symbol -> code name):
    D (model width)                 d_model
    E·D (inner width)               d_inner = expand * d_model
    N (state size)                  d_state
    R (rank of Δ's projection)      dt_rank ("auto" = ceil(d_model / 16))
    x, z (SSM branch, gate branch)  in_proj(x).chunk(2)
    Δ = softplus(W_Δ x + b_Δ)       dt = softplus(dt_proj(x_proj(x)[:R]))
    A = -exp(A_log)                 A_log, initialised to log(1..N) (S4D-Real)
    A = f(w) (StableSSM map)        eigen_param != "exp": A_direct / A_softplus / A_best = w,
                                    A = longssm.reparam.eigen_real(w), same initial A
    B_t, C_t                        x_proj(x)[R:R+N], x_proj(x)[R+N:]
    D (skip)                        D
    h_t                             state.ssm       (batch, d_inner, d_state)
    last K-1 conv inputs            state.conv      (batch, d_inner, d_conv - 1 [+ smr - 1])

Block: x, z = in_proj(u); x = silu(conv1d(x)) (causal, depthwise; skipped when d_conv = 0);
[x = x ⊙ σ(SMR_m(x)) with ``smr`` = m > 0, ``layers/smr.py``];
y = selective_scan(x, Δ, A, B, C, D) (the op's dispatcher picks the form for option ``scan``);
out = out_proj(y * silu(z)).

``negative_eigenvalues=True`` (Grazzi et al., 2025) makes the transition 2 exp(Δ_t A) - 1, in
(-1, 1): a state entry may flip sign each step (parity, modular counting). The fused CPU kernels
implement it (since session 10); the Triton kernels do not, so ``scan="auto"`` runs the chunked
form on CUDA.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm.layers.base import add_offset, announce_scan_path, tag_ssm_param
from longssm.layers.gated import GatedBlock, is_plain_linear
from longssm.layers.mamba_inner import fusable, mamba_inner
from longssm.layers.smr import SMRGate, check_smr
from longssm.ops.selective_scan import (
    DEFAULT_CHUNK_SIZE,
    apply_gate,
    resolve_path,
    selective_scan,
    selective_scan_step,
)
from longssm.ops.selective_scan import PATHS as SCANS
from longssm.ops.step_size import step_size
from longssm.reparam import check_eigen_param, eigen_real, eigen_real_inverse

# Stored name of A's raw parameter per StableSSM map; "exp" keeps transformers' A_log.
A_PARAM_NAMES = {"exp": "A_log", "direct": "A_direct", "softplus": "A_softplus", "best": "A_best"}


class MambaState(NamedTuple):
    """State of one Mamba layer.

    ssm: (batch, d_inner, d_state) the SSM hidden state h_t.
    conv: (batch, d_inner, max(d_conv - 1, 0)) the last d_conv - 1 inputs of the causal
        convolution, oldest first (zero width when there is no convolution).
    """

    ssm: torch.Tensor
    conv: torch.Tensor


class Mamba(GatedBlock):
    """Selective state-space mixer (Gu & Dao, 2023); modules shared with Longhorn in ``gated.py``.

    Args:
        d_model: residual width D.
        d_state: state size N.
        expand: d_inner = expand * d_model.
        d_conv: causal depthwise convolution kernel; 0 = no convolution (LongSSM's models).
        dt_rank: rank R of Δ's projection, or "auto" = ceil(d_model / 16).
        dt_min, dt_max: Δ is initialised log-uniform in [dt_min, dt_max] ...
        dt_init_floor: ... and floored at dt_init_floor.
        dt_scale: dt_proj.weight init scale (std = dt_scale / sqrt(R)).
        dt_init: "random" (uniform dt_proj.weight) or "constant".
        bias: bias in in_proj and out_proj.
        conv_bias: bias in conv1d.
        scan: "auto" (fused numba kernel for CPU tensors when numba is importable, Triton kernel
            for CUDA tensors when triton is importable, else chunk), "fused" (CPU only), "triton"
            (CUDA only), "chunk" (pure torch, any device) or "naive" (reference loop).
        chunk_size: chunk length of the chunked scan.
        eigen_param: StableSSM map from the stored parameter to A (``longssm.reparam``); "exp"
            stores A_log (transformers' layout), the others A_<map>.
        eigen_param_b: b of eigen_param="best".
        negative_eigenvalues: transition 2 exp(Δ_t A) - 1 in (-1, 1) instead of exp(Δ_t A).
        smr: taps m of the State Memory Replay gate on the scan's input (0 = none).
    """

    NAME = "Mamba"
    STATE = MambaState

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        dt_init: str = "random",
        bias: bool = False,
        conv_bias: bool = True,
        scan: str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        eigen_param: str = "exp",
        eigen_param_b: float = 0.5,
        negative_eigenvalues: bool = False,
        smr: int = 0,
    ):
        super().__init__()
        if not isinstance(negative_eigenvalues, bool):
            raise ValueError(
                f"Mamba: negative_eigenvalues must be true or false, got {negative_eigenvalues!r}"
            )
        self.negative_eigenvalues = negative_eigenvalues
        self.smr = check_smr(smr, "Mamba")
        if scan not in SCANS:
            raise ValueError(f"Mamba: scan must be one of {', '.join(SCANS)}, got {scan!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self._build_input_side(d_model, d_state, expand, d_conv, dt_rank, bias, conv_bias)
        self.scan = scan
        self.chunk_size = chunk_size
        check_eigen_param(eigen_param, eigen_param_b)
        self.eigen_param, self.eigen_param_b = eigen_param, eigen_param_b
        # S4D-Real A = -(1..N) under every map; the inverse map gives the stored parameter.
        A_init = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        A_raw = eigen_real_inverse(A_init, eigen_param, eigen_param_b)  # (Di, N)
        self.register_parameter(A_PARAM_NAMES[eigen_param], nn.Parameter(A_raw))
        tag_ssm_param(self.A_raw)
        self._build_output_side(bias)

        dt_std = dt_scale * self.dt_rank**-0.5
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
            log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
            dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=dt_init_floor)  # (Di,)
            # softplus^-1(dt) = dt + log(1 - exp(-dt)), written with expm1 for small dt.
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # created last, and only with smr > 0, so that the default layer draws the same numbers
        if self.smr:
            self.smr_gate = SMRGate(self.d_inner, self.smr)

    @property
    def A_raw(self) -> nn.Parameter:
        """The stored parameter w of A (A_log under "exp"), (d_inner, d_state)."""
        return getattr(self, A_PARAM_NAMES[self.eigen_param])

    def eigenvalues(self) -> torch.Tensor:
        """A = f(w) (d_inner, d_state), real and negative, in float32 or wider."""
        raw = self.A_raw
        # half precision goes up to float32; float64 stays float64 (exact float64 training)
        raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
        return eigen_real(raw, self.eigen_param, self.eigen_param_b)

    def _ssm_inputs(self, x: torch.Tensor):
        """Split x_proj(x) into Δ (after softplus), B and C; x (..., d_inner)."""
        dt_low, B, C = self._split_x_proj(x)  # (..., R), (..., N), (..., N)
        return self._step_sizes(dt_low), B, C  # (..., Di), (..., N), (..., N)

    def _step_sizes(self, dt_low: torch.Tensor) -> torch.Tensor:
        """Δ = softplus(dt_proj(dt_low)): dt_low (..., R) -> (..., Di). A plain ``nn.Linear``
        dt_proj goes to the ``step_size`` op (fused numba kernels on CPU: the projection, bias and
        softplus in one pass); anything else in its place (a wrapper, a parametrisation, hooks)
        is called as a module."""
        proj = self.dt_proj
        if not is_plain_linear(proj):
            return F.softplus(proj(dt_low))
        return step_size(dt_low, proj.weight, proj.bias)

    def _scan(self, xs: torch.Tensor, h0: torch.Tensor | None, offset=None, gate=None):
        """The selective scan over xs (B, T, Di) from h0 (B, Di, N) or zeros -> y, h_T; y gets
        offset(C) (B, T, Di) added when ``offset`` is given (``layers.base.add_offset``), then is
        multiplied by silu(gate) when ``gate`` (B, T, Di) is given (inside the fused kernels)."""
        A = self.eigenvalues()  # (Di, N)
        neg = self.negative_eigenvalues
        path = resolve_path(self.scan, xs, h0, negative_eigenvalues=neg)
        announce_scan_path(self.NAME, path, self.scan)
        if path == "fused" and offset is None and fusable(self, xs, h0, gate):
            return mamba_inner(self, xs, gate, A, h0, neg)  # the same steps as one autograd node
        dt, B, C = self._ssm_inputs(xs)  # (B, T, Di), (B, T, N), (B, T, N)
        y, h = selective_scan(
            xs, dt, A, B, C, self.D, h0, True, self.chunk_size, path, neg, gate
        )  # (B, T, Di) gated when a gate is given, (B, Di, N)
        if offset is None:
            return y, h
        # (y + o) ⊙ silu(z) as y ⊙ silu(z) + o ⊙ silu(z): a zero offset leaves y's bits alone.
        return y + apply_gate(offset(C).to(y.dtype), gate), h

    def _scan_step(self, xs: torch.Tensor, h: torch.Tensor, offset=None):
        """One selective-scan step: xs (B, Di), h (B, Di, N) -> y (B, Di) (+ offset(C)), h."""
        dt, B, C = self._ssm_inputs(xs)  # (B, Di), (B, N), (B, N)
        A = self.eigenvalues()  # (Di, N)
        y, h = selective_scan_step(xs, dt, A, B, C, self.D, h, self.negative_eigenvalues)
        return add_offset(y, offset, C), h
