"""Mamba-2 mixer: input projection, short causal convolution, SSD scan, gated RMSNorm, output.

Submodule and parameter names follow transformers' ``Mamba2Mixer`` so that checkpoints convert by
renaming only (``longssm.interop.hf_mamba2``).

Glossary (paper symbol -> code name):
    D (model width)                 d_model
    E (expansion)                   expand; d_inner = expand * d_model unless given (a model
                                    whose heads were pruned has d_inner = nheads' * headdim)
    N (state size per head)         d_state
    P (head dimension)              headdim; nheads = d_inner / headdim
    G (groups sharing B, C)         ngroups
    Δ_t (step size)                 dt = softplus(dt_raw + dt_bias), optionally clamped to dt_limit
    a_h (decay rate per head)       A = -exp(A_log)
    B_t, C_t                        B, C: (batch, T, ngroups, d_state), from the xBC projection
    z (gate)                        z: (batch, T, d_inner); output = norm(y * silu(z))
    h_t (SSM state)                 Mamba2State.ssm: (batch, nheads, headdim, d_state)
    conv window                     Mamba2State.conv: (batch, conv_dim, d_conv - 1),
                                    conv_dim = d_inner + 2 * ngroups * d_state

in_proj output layout (as in transformers): [z (d_inner) | xBC (conv_dim) | dt_raw (nheads)],
and xBC = [x (d_inner) | B (ngroups * d_state) | C (ngroups * d_state)].
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from longssm.layers import project_in as fused_projection
from longssm.layers.base import (
    add_offset,
    announce_scan_path,
    check_input,
    check_state,
    empty_sequence,
    tag_no_weight_decay,
    tag_ssm_param,
)
from longssm.layers.conv import causal_conv, causal_conv_step
from longssm.layers.gated import is_plain_linear
from longssm.ops.rms_norm import gated_rms_norm
from longssm.ops.ssd import PATHS as SCANS
from longssm.ops.ssd import resolve_path, ssd, ssd_step


class Mamba2State(NamedTuple):
    """State of one Mamba-2 layer.

    ssm: (batch, nheads, headdim, d_state) SSD hidden state h_t (float32, or float64).
    conv: (batch, conv_dim, d_conv - 1) last d_conv - 1 inputs of the convolution (zero width when
        the convolution is off).
    """

    ssm: torch.Tensor
    conv: torch.Tensor


class RMSNormGated(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` with the mean square taken over groups of ``group_size``.

    Computed in float32 (float64 stays float64), as transformers' ``MambaRMSNormGated`` with
    ``norm_before_gate=False``. With one group and y, z and the weight in the compute dtype, gate
    and norm run as the ``gated_rms_norm`` op (fused numba kernels on CPU); otherwise in torch ops.

    Args:
        d: width of the last dimension (d_inner).
        group_size: d_inner / ngroups.
        eps: added to the mean square.
    """

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if d % group_size != 0:
            raise ValueError(f"group_size ({group_size}) must divide d ({d})")
        self.group_size = group_size
        self.eps = eps
        self.weight = tag_no_weight_decay(nn.Parameter(torch.ones(d)))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        compute = torch.float64 if y.dtype == torch.float64 else torch.float32
        if self.group_size == y.shape[-1] and y.dtype == z.dtype == compute == self.weight.dtype:
            # one group in the compute dtype: the ``gated_rms_norm`` op (gate and norm in one
            # fused numba kernel each way on CPU)
            return gated_rms_norm(y, z, self.weight, self.eps)  # (..., d)
        h = y.to(compute) * F.silu(z.to(compute))  # (..., d)
        groups = h.unflatten(-1, (-1, self.group_size))  # (..., G, d/G)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.flatten(-2).to(y.dtype)


class Mamba2(nn.Module):
    """Mamba-2 sequence mixer with the longssm state protocol.

    Args:
        d_model: input and output width.
        d_state: SSM state size N per head.
        d_conv: causal depthwise convolution kernel; 0 switches it off (the xBC activation stays).
        expand: d_inner = expand * d_model (when ``d_inner`` is None).
        d_inner: inner width, overriding expand * d_model (head pruning, ``longssm prune
            --method heads``); a multiple of headdim.
        headdim: head dimension P; must divide d_inner.
        ngroups: number of B, C groups; must divide nheads.
        dt_min, dt_max: initial Δ ~ logUniform[dt_min, dt_max] (through dt_bias).
        dt_init_floor: lower clamp of the initial Δ.
        dt_limit: (low, high) clamp of Δ in the forward pass; (0, inf) = none.
        bias: bias in in_proj and out_proj.
        conv_bias: bias in conv1d.
        chunk_size: chunk length of the SSD chunked scan.
        scan: "auto" (the fused numba kernels on CPU when numba is installed, fla's Triton
            kernels for CUDA inference when fla is importable, else chunk), "chunk" (matmul form,
            any device), "fused" (numba kernels, CPU only), "fla" (also for training; see
            ``longssm.ops.ssd.fla_gpu``) or "naive" (reference loop).
        norm_eps: epsilon of the gated RMSNorm; None = 1e-5 (the registry passes the model's
            norm_eps unless the ``norm_eps`` mixer option, set by head pruning, is given).
        layer_idx: position in the stack (informational).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 64,
        scan: str = "auto",
        norm_eps: float | None = None,
        layer_idx: int | None = None,
        d_inner: int | None = None,
    ):
        super().__init__()
        if d_inner is None:
            d_inner = expand * d_model
        elif isinstance(d_inner, bool) or not isinstance(d_inner, int) or d_inner <= 0:
            raise ValueError(f"Mamba2: d_inner must be a positive integer or None, got {d_inner!r}")
        if not isinstance(headdim, int) or headdim <= 0 or d_inner % headdim != 0:
            raise ValueError(
                f"Mamba2: headdim ({headdim!r}) must be a positive integer dividing d_inner "
                f"({d_inner})"
            )
        nheads = d_inner // headdim
        if not isinstance(ngroups, int) or ngroups <= 0 or nheads % ngroups != 0:
            raise ValueError(
                f"Mamba2: ngroups ({ngroups!r}) must be a positive integer dividing "
                f"nheads ({nheads})"
            )
        if scan not in SCANS:
            raise ValueError(f"Mamba2: scan must be one of {SCANS}, got {scan!r}")
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"Mamba2: chunk_size must be a positive integer, got {chunk_size!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba2: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if len(dt_limit) != 2 or not 0 <= dt_limit[0] < dt_limit[1]:
            raise ValueError(
                f"Mamba2: dt_limit must be (low, high) with 0 <= low < high, got {dt_limit}"
            )
        if d_conv < 0:
            raise ValueError(f"Mamba2: d_conv must be >= 0, got {d_conv}")

        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups = d_inner, headdim, nheads, ngroups
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.chunk_size, self.scan, self.layer_idx = chunk_size, scan, layer_idx

        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + nheads, bias=bias)
        if d_conv > 0:
            self.conv1d = nn.Conv1d(
                self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                padding=d_conv - 1, bias=conv_bias,
            )
        else:
            self.conv1d = None

        # Δ ~ logUniform[dt_min, dt_max]; dt_bias = softplus⁻¹(Δ) so softplus(0 + dt_bias) = Δ.
        dt = torch.exp(
            torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)  # (H,)
        self.dt_bias = tag_ssm_param(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))
        self.A_log = tag_ssm_param(nn.Parameter(torch.log(torch.empty(nheads).uniform_(1, 16))))
        self.D = tag_ssm_param(nn.Parameter(torch.ones(nheads)))
        eps = 1e-5 if norm_eps is None else norm_eps
        self.norm = RMSNormGated(d_inner, d_inner // ngroups, eps=eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        for module in (self.in_proj, self.conv1d, self.out_proj):
            if module is not None and module.bias is not None:
                tag_no_weight_decay(module.bias)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        """Zeros. ``ssm`` is at least float32 (it accumulates); ``conv`` has ``dtype``.

        Args:
            batch_size: number of rows.
            device, dtype: default to the parameters'.

        Returns:
            Mamba2State(ssm (batch, nheads, headdim, d_state), conv (batch, conv_dim, d_conv - 1)).
        """
        device = self.A_log.device if device is None else device
        dtype = self.A_log.dtype if dtype is None else dtype
        ssm_dtype = torch.promote_types(dtype, torch.float32)
        return Mamba2State(
            ssm=torch.zeros(batch_size, self.nheads, self.headdim, self.d_state,
                            device=device, dtype=ssm_dtype),
            conv=torch.zeros(batch_size, self.conv_dim, max(self.d_conv - 1, 0),
                             device=device, dtype=dtype),
        )

    def _dt(self, dt_raw: torch.Tensor) -> torch.Tensor:
        """Δ = softplus(dt_raw + dt_bias), clamped to dt_limit when one is set."""
        dt = F.softplus(dt_raw + self.dt_bias)  # (..., H)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(self.dt_limit[0], self.dt_limit[1])
        return dt

    def _check_state(self, state: Mamba2State, x: torch.Tensor) -> None:
        check_state(state, self.initial_state(x.shape[0], x.device, x.dtype), "Mamba2")

    def forward(
        self, x: torch.Tensor, state: Mamba2State | None = None
    ) -> tuple[torch.Tensor, Mamba2State]:
        """Mix a sequence.

        Args:
            x: (batch, T, d_model).
            state: Mamba2State from ``initial_state`` or a previous call, or None for zeros.

        Returns:
            y: (batch, T, d_model) and the Mamba2State after the last token.
        """
        return self.forward_offset(x, state)

    def step(
        self, x_t: torch.Tensor, state: Mamba2State | None = None
    ) -> tuple[torch.Tensor, Mamba2State]:
        """Mix one token (recurrent form, for decoding).

        Args:
            x_t: (batch, d_model).
            state: Mamba2State, or None for zeros.

        Returns:
            y_t: (batch, d_model) and the updated Mamba2State.
        """
        return self.step_offset(x_t, state)

    def _project_in(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """in_proj(x) split into z, xBC, dt_raw (..., d_inner / conv_dim / nheads). A plain
        ``nn.Linear`` without a bias runs as ``layers.project_in`` where it applies (one matmul
        per block, each block contiguous: the conv reads xBC without a copy, and the backward
        accumulates three input gradients instead of concatenating the output gradients);
        anything else (a bias, LoRA, pruning's parametrisation, hooks) as one call and a split."""
        sizes = (self.d_inner, self.conv_dim, self.nheads)
        proj = self.in_proj
        if is_plain_linear(proj) and fused_projection.fusable(proj.weight, proj.bias, x):
            return fused_projection.project_in(x, proj.weight, sizes)
        return proj(x).split(list(sizes), dim=-1)

    def _split_xBC(self, xBC: torch.Tensor):
        """x (..., H, P), B and C (..., G, N) of the convolved xBC (..., conv_dim)."""
        lead, G, N = xBC.shape[:-1], self.ngroups, self.d_state
        xs, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        return (xs.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, G, N),
                C.reshape(*lead, G, N))

    def forward_offset(
        self, x: torch.Tensor, state: Mamba2State | None = None, offset=None
    ) -> tuple[torch.Tensor, Mamba2State]:
        """``forward`` with offset(C_t) (batch, T, H, P) added to the SSD output before the gated
        RMSNorm (the readout offset of ``layers.base``; the state adapters' extension point)."""
        check_input(x, self.d_model)
        if state is not None:
            self._check_state(state, x)
        if x.shape[1] == 0:
            return empty_sequence(self, x, state)
        batch, T, _ = x.shape
        z, xBC, dt_raw = self._project_in(x)  # (b, T, d_inner), (b, T, conv_dim), (b, T, H)

        conv_hist = None if state is None else state.conv
        xBC, conv_state = causal_conv(self.conv1d, xBC, conv_hist, activation="silu")  # (b, T, C)

        xs, B, C = self._split_xBC(xBC)  # (b, T, H, P), (b, T, G, N), (b, T, G, N)
        h0 = None if state is None else state.ssm
        path = resolve_path(self.scan, xs, h0)
        announce_scan_path("Mamba-2", path, self.scan)
        y, ssm_state = ssd(
            xs, self._dt(dt_raw), -torch.exp(self.A_log), B, C, self.D,  # Δ (b, T, H), A (H,)
            initial_state=h0,
            output_final_state=True,
            chunk_size=self.chunk_size,
            path=path,
        )  # (b, T, H, P), (b, H, P, N)
        y = add_offset(y, offset, C)
        y = self.norm(y.reshape(batch, T, self.d_inner), z)  # (b, T, d_inner)
        return self.out_proj(y), Mamba2State(ssm_state, conv_state)

    def step_offset(
        self, x_t: torch.Tensor, state: Mamba2State | None = None, offset=None
    ) -> tuple[torch.Tensor, Mamba2State]:
        """``step`` with offset(C_t) (batch, H, P) added before the gated RMSNorm."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        if state is None:
            state = self.initial_state(x_t.shape[0], x_t.device, x_t.dtype)
        else:
            self._check_state(state, x_t)
        batch = x_t.shape[0]
        proj = self.in_proj(x_t)  # (b, 2*d_inner + 2*G*N + H)
        z, xBC, dt_raw = proj.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

        xBC, conv_state = causal_conv_step(self.conv1d, xBC, state.conv)  # (b, C), (b, C, K-1)
        xs, B, C = self._split_xBC(F.silu(xBC))  # (b, H, P), (b, G, N), (b, G, N)
        y, ssm_state = ssd_step(
            xs, self._dt(dt_raw), -torch.exp(self.A_log), B, C, self.D, state=state.ssm
        )  # (b, H, P), (b, H, P, N)
        y = add_offset(y, offset, C)
        y = self.norm(y.reshape(batch, self.d_inner), z)  # (b, d_inner)
        return self.out_proj(y), Mamba2State(ssm_state, conv_state)
