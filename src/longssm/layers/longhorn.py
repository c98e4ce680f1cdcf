"""Longhorn mixer (Liu et al., 2024) with the longssm state protocol.

The block is Mamba's (in_proj -> short causal conv -> SSM -> gate -> out_proj) with the selective
scan replaced by Longhorn's online-learning update, which needs no separate transition matrix A:
the forgetting 1 - ε k² is tied to how strongly the new key is written.

Glossary (paper symbol -> code name):
    D (model width)                   d_model
    d_inner (SSM width)               d_inner = expand * d_model
    N (key / query size)              d_state
    R (rank of β's projection)        dt_rank ("auto" = ceil(d_model / 16))
    x, z (SSM branch, gate branch)    in_proj(u).chunk(2)
    β_t = sigmoid(W_β x_t + b_β)      beta = sigmoid(dt_proj(x_proj(x)[:R])), per channel
    k_t, q_t (key, query)             x_proj(x)[R:R+N], x_proj(x)[R+N:]
    ε_t = β_t / (1 + β_t ||k_t||²)    computed in ``ops.longhorn``
    D (skip)                          D
    S_t                               state.ssm    (batch, d_inner, d_state)
    last K-1 conv inputs              state.conv   (batch, d_inner, d_conv - 1)

Recurrence: S_t = (1 - ε_t k_t²) ⊙ S_{t-1} + ε_t x_t k_tᵀ,  y_t = S_t q_t + D x_t;
out = out_proj(y * silu(z)).

Options (``ModelConfig.mixer_options``): ``dt_rank`` ("auto"), ``beta_min`` / ``beta_max``
(β = sigmoid(b_β) is initialised log-uniform in this range; default 1e-3 / 0.1), ``dt_scale``
(init scale of dt_proj.weight, default 1), ``bias`` (in_proj / out_proj, default False),
``conv_bias`` (default True), ``beta_init`` loguniform|official (default loguniform, ours:
sigmoid(b_β) ~ logU[beta_min, beta_max]; official: as Cranial-XIX/longhorn, every Linear bias,
b_β included, is zero, so β ≈ sigmoid(W_β x) ≈ 0.5 at init and beta_min / beta_max are unused),
``scan`` auto|fused|chunk|naive (default auto: the fused numba
kernel for CPU tensors when numba is importable, else chunk; measured 27-44x faster than chunk
for forward + backward on CPU, see ``ops/longhorn/README.md``), ``chunk_size`` (default 32).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from longssm.layers.base import add_offset, announce_scan_path
from longssm.layers.gated import GatedBlock
from longssm.ops.longhorn import DEFAULT_CHUNK_SIZE, longhorn, longhorn_step, resolve_path
from longssm.ops.longhorn import PATHS as SCANS
from longssm.ops.selective_scan import apply_gate

BETA_INITS = ("loguniform", "official")


class LonghornState(NamedTuple):
    """State of one Longhorn layer.

    ssm: (batch, d_inner, d_state) the state S_t.
    conv: (batch, d_inner, max(d_conv - 1, 0)) the last d_conv - 1 inputs of the causal
        convolution, oldest first (zero width when there is no convolution).
    """

    ssm: torch.Tensor
    conv: torch.Tensor


class Longhorn(GatedBlock):
    """Longhorn mixer: ``forward(x, state=None) -> (y, LonghornState)``.

    Args:
        d_model: residual width.
        d_state: key / query size N.
        expand: d_inner = expand * d_model.
        d_conv: causal depthwise convolution kernel; 0 = no convolution.
        dt_rank: rank R of β's projection, or "auto" = ceil(d_model / 16).
        beta_min, beta_max: β = sigmoid(b_β) is initialised log-uniform in [beta_min, beta_max].
        beta_init: "loguniform" (the above) or "official" (every Linear bias zero, β ≈ 0.5).
        dt_scale: dt_proj.weight init scale (uniform, bound dt_scale / sqrt(R)).
        bias: bias in in_proj and out_proj.
        conv_bias: bias in conv1d.
        scan: "auto" (fused numba kernel for CPU tensors when numba is importable, else chunk),
            "fused" (CPU only), "chunk" (pure torch, any device) or "naive" (reference loop).
        chunk_size: chunk length of the chunked form (used by scan="chunk" and by "auto" when it
            picks chunk).
    """

    NAME = "Longhorn"
    STATE = LonghornState

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | str = "auto",
        beta_min: float = 1e-3,
        beta_max: float = 0.1,
        dt_scale: float = 1.0,
        bias: bool = False,
        conv_bias: bool = True,
        scan: str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        beta_init: str = "loguniform",
    ):
        super().__init__()
        if beta_init not in BETA_INITS:
            raise ValueError(
                f"Longhorn: beta_init must be one of {list(BETA_INITS)}, got {beta_init!r}"
            )
        if scan not in SCANS:
            raise ValueError(f"Longhorn: scan must be one of {', '.join(SCANS)}, got {scan!r}")
        if not 0 < beta_min <= beta_max < 1:
            raise ValueError(
                f"Longhorn: need 0 < beta_min <= beta_max < 1, got beta_min={beta_min}, "
                f"beta_max={beta_max}"
            )
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"Longhorn: chunk_size must be a positive integer, got {chunk_size!r}")
        self._build_input_side(d_model, d_state, expand, d_conv, dt_rank, bias, conv_bias)
        self.scan = scan
        self.chunk_size = chunk_size
        self._build_output_side(bias)
        self.beta_init = beta_init

        bound = dt_scale * self.dt_rank**-0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            if beta_init == "official":
                for module in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj):
                    if module.bias is not None:
                        module.bias.zero_()
            else:
                u = torch.rand(self.d_inner, dtype=torch.float64)
                log_beta = u * (math.log(beta_max) - math.log(beta_min)) + math.log(beta_min)
                beta = torch.exp(log_beta)  # (Di,)
                # sigmoid⁻¹(β) = log β - log(1 - β)
                self.dt_proj.bias.copy_(log_beta - torch.log1p(-beta))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, scan={self.scan}, beta_init={self.beta_init}"
        )

    def _ssm_inputs(self, x: torch.Tensor):
        """β (after the sigmoid), k and q from x (..., d_inner)."""
        dt_low, k, q = self._split_x_proj(x)  # (..., R), (..., N), (..., N)
        beta = torch.sigmoid(self.dt_proj(dt_low))  # (..., Di)
        return beta, k, q

    def _scan(self, xs: torch.Tensor, h0: torch.Tensor | None, offset=None, gate=None):
        """The Longhorn scan over xs (B, T, Di) from h0 (B, Di, N) or zeros -> y, S_T; y gets
        offset(q) added when ``offset`` is given (``layers.base.add_offset``), then is multiplied
        by silu(gate) when ``gate`` (B, T, Di) is given."""
        beta, k, q = self._ssm_inputs(xs)  # (B, T, Di), (B, T, N), (B, T, N)
        path = resolve_path(self.scan, xs, h0)
        announce_scan_path(self.NAME, path, self.scan)
        y, S = longhorn(xs, beta, k, q, self.D, h0, True, chunk_size=self.chunk_size, path=path)
        return apply_gate(add_offset(y, offset, q), gate), S

    def _scan_step(self, xs: torch.Tensor, h: torch.Tensor, offset=None):
        """One Longhorn step: xs (B, Di), S (B, Di, N) -> y (B, Di) (+ offset(q)), S."""
        beta, k, q = self._ssm_inputs(xs)  # (B, Di), (B, N), (B, N)
        y, S = longhorn_step(xs, beta, k, q, self.D, h)
        return add_offset(y, offset, q), S
