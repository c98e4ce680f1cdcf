"""The gated block skeleton shared by Mamba and Longhorn.

    x, z = in_proj(u).chunk(2)          (batch, T, d_inner) each
    x = silu(conv1d_K(x))               causal depthwise convolution, carried state (K - 1 inputs)
    x = x ⊙ σ(smr_m(x) + b)             optional SMR gate (``layers/smr.py``; Mamba's ``smr``),
                                        carried state (m - 1 inputs) after the convolution's
    r, b, c = x_proj(x).split(R, N, N)  low-rank input of the step size (Mamba's Δ, Longhorn's β),
                                        and two N-vectors (Mamba's B, C; Longhorn's k, q)
    ... the mixer's scan, with a skip D ...
    out = out_proj(y * silu(z))

``GatedBlock`` builds and validates these modules, gives the zero state and runs forward / step
around the scan; the subclasses add their scan parameters and implement ``_scan`` (a sequence) and
``_scan_step`` (one step). ``forward_offset`` / ``step_offset`` add a readout offset to the scan's
output before the gate (the state adapters' extension point, ``layers.base``). Parameter names
follow transformers' MambaMixer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from longssm.layers import project_in as fused_projection
from longssm.layers.base import (
    check_input,
    check_state,
    empty_sequence,
    has_hooks,
    tag_no_weight_decay,
    tag_ssm_param,
)
from longssm.layers.conv import causal_conv, causal_conv_step


class GatedState(NamedTuple):
    """State of one gated block.

    ssm: (batch, d_inner, d_state) the scan's state.
    conv: (batch, d_inner, max(d_conv - 1, 0) + max(smr - 1, 0)) the input histories, oldest
        first: the last d_conv - 1 inputs of the causal convolution, then the last smr - 1 inputs
        of the SMR gate (zero width when there are neither).
    """

    ssm: torch.Tensor
    conv: torch.Tensor


class GatedBlock(nn.Module):
    """Shared modules of a gated SSM block; subclasses set ``NAME`` and ``STATE``."""

    NAME = "gated block"
    STATE: type = GatedState

    def _build_input_side(
        self,
        d_model: int,
        d_state: int,
        expand: int,
        d_conv: int,
        dt_rank: int | str,
        bias: bool,
        conv_bias: bool,
    ) -> None:
        """Validate the sizes and create in_proj, conv1d (None when d_conv = 0), x_proj, dt_proj."""
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank <= 0:
            raise ValueError(
                f"{self.NAME}: dt_rank must be a positive integer or 'auto', got {dt_rank!r}"
            )
        if not isinstance(d_conv, int) or d_conv < 0:
            raise ValueError(f"{self.NAME}: d_conv must be a non-negative integer, got {d_conv!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.d_conv = d_conv
        self.dt_rank = dt_rank
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        if d_conv > 0:
            # No padding: the layer prepends the carried conv state (zeros by default) itself.
            self.conv1d = nn.Conv1d(
                self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=conv_bias
            )
        else:
            self.conv1d = None
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner, bias=True)
        # the optional SMR gate (``layers/smr.py``); a subclass sets it after its own parameters
        self.smr_gate = None

    def _build_output_side(self, bias: bool) -> None:
        """Create the skip D (ones) and out_proj; tag D, dt_proj.bias and the biases."""
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias)
        tag_ssm_param(self.D)
        tag_ssm_param(self.dt_proj.bias)
        for module in (self.in_proj, self.out_proj, self.conv1d):
            if module is not None and module.bias is not None:
                tag_no_weight_decay(module.bias)

    def initial_state(self, batch_size: int, device=None, dtype=None):
        """Zeros: ssm (batch, d_inner, d_state), conv (batch, d_inner, histories' width)."""
        device = self.D.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        width = self._conv_width() + self._smr_width()
        return self.STATE(
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
            conv=torch.zeros(batch_size, self.d_inner, width, device=device, dtype=dtype),
        )

    def _conv_width(self) -> int:
        return max(self.d_conv - 1, 0)

    def _smr_width(self) -> int:
        return 0 if self.smr_gate is None else self.smr_gate.width

    def _histories(self, conv: torch.Tensor | None):
        """The carried ``conv`` field split into (convolution history, SMR history)."""
        if conv is None or self.smr_gate is None:
            return conv, None
        return conv[..., : self._conv_width()], conv[..., self._conv_width() :]

    def _replay(self, xs: torch.Tensor, conv_hist: torch.Tensor, smr_hist, step: bool = False):
        """The SMR gate on xs (after the convolution); returns xs and the joined histories."""
        if self.smr_gate is None:
            return xs, conv_hist
        if step:
            if smr_hist is None:
                smr_hist = xs.new_zeros(xs.shape[0], self.d_inner, self._smr_width())
            xs, smr_hist = self.smr_gate.step(xs, smr_hist)  # (B, Di), (B, Di, m-1)
        else:
            xs, smr_hist = self.smr_gate(xs, smr_hist)  # (B, T, Di), (B, Di, m-1)
        return xs, torch.cat([conv_hist, smr_hist], dim=-1)

    def project_in(self, x: torch.Tensor):
        """in_proj(x) split into the scan branch and the gate branch: x (..., D) -> (x, z), each
        (..., d_inner).

        A plain ``nn.Linear`` runs as two matmuls, one per half of its weight, so that both halves
        come out contiguous: the fused kernels then read them without a copy, and the backward adds
        two input gradients instead of concatenating two output gradients (one call plus chunk(2)
        cost two copies and a concatenation of (batch, T, d_inner) per layer). Anything else in
        in_proj's place (a LoRA wrapper, a parametrisation such as pruning's, forward hooks) runs
        as one call and chunk(2), so that it sees the whole projection.
        """
        proj = self.in_proj
        if not is_plain_linear(proj):
            return proj(x).chunk(2, dim=-1)
        E, weight, bias = self.d_inner, proj.weight, proj.bias
        if fused_projection.fusable(weight, bias, x):
            return fused_projection.project_in(x, weight)  # one autograd node, same bits
        return (
            F.linear(x, weight[:E], None if bias is None else bias[:E]),
            F.linear(x, weight[E:], None if bias is None else bias[E:]),
        )

    def _split_x_proj(self, x: torch.Tensor):
        """x_proj(x) split into the low-rank step input (..., R) and two (..., N) vectors."""
        return torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)

    def _scan(self, xs: torch.Tensor, h0: torch.Tensor | None, offset=None, gate=None):
        """The scan over a sequence: xs (B, T, Di), h0 (B, Di, N) or None -> y (B, T, Di), h_T;
        ``offset`` (``layers.base``) adds offset(C_t) to y; ``gate`` (B, T, Di) z, or None,
        multiplies the result by silu(z) (the block's output gate, which the fused kernels apply
        in the same pass)."""
        raise NotImplementedError

    def _scan_step(self, xs: torch.Tensor, h: torch.Tensor, offset=None):
        """One step of the scan: xs (B, Di), h (B, Di, N) -> y (B, Di), h; ``offset`` as in
        ``_scan``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state=None):
        """Args: x (batch, time, d_model); state (``STATE``) or None for zeros.

        Returns: y (batch, time, d_model) and the state after the last step.
        """
        return self.forward_offset(x, state)

    def step(self, x_t: torch.Tensor, state):
        """One decoding step. Args: x_t (batch, d_model); state (``STATE``) or None for zeros.

        Returns: y_t (batch, d_model) and the state.
        """
        return self.step_offset(x_t, state)

    def forward_offset(self, x: torch.Tensor, state=None, offset=None):
        """``forward`` with offset(C_t) added to the scan's output before the gate (the readout
        offset of ``layers.base``; the state adapters' extension point)."""
        check_input(x, self.d_model)
        if state is not None:
            check_state(state, self.initial_state(x.shape[0], x.device, x.dtype), self.NAME)
        if x.shape[1] == 0:
            return empty_sequence(self, x, state)
        xs, z = self.project_in(x)  # (B, T, Di) each
        conv_hist, smr_hist = self._histories(None if state is None else state.conv)
        xs, conv_state = causal_conv(self.conv1d, xs, conv_hist, activation="silu")  # (B, T, Di)
        xs, conv_state = self._replay(xs, conv_state, smr_hist)  # (B, T, Di)
        # y ⊙ silu(z): the gate goes into the scan (one pass in the fused kernels)
        y, h = self._scan(xs, None if state is None else state.ssm, offset, gate=z)  # (B, T, Di)
        return self.out_proj(y), self.STATE(ssm=h, conv=conv_state)

    def step_offset(self, x_t: torch.Tensor, state, offset=None):
        """``step`` with offset(C_t) added to the scan's output before the gate."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        batch = x_t.shape[0]
        if state is None:
            state = self.initial_state(batch, x_t.device, x_t.dtype)
        else:
            check_state(state, self.initial_state(batch, x_t.device, x_t.dtype), self.NAME)
        xs, z = self.project_in(x_t)  # (B, Di) each
        conv_hist, smr_hist = self._histories(state.conv)
        xs, conv_state = causal_conv_step(self.conv1d, xs, conv_hist)  # (B, Di), (B, Di, K-1)
        xs, conv_state = self._replay(F.silu(xs), conv_state, smr_hist, step=True)  # (B, Di)
        y, h = self._scan_step(xs, state.ssm, offset)  # (B, Di), (B, Di, N)
        return self.out_proj(y * F.silu(z)), self.STATE(ssm=h, conv=conv_state)


def is_plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` that a layer may replace by its own use of the
    weight and bias (split matmuls, a fused kernel): no subclass or wrapper (LoRA), no
    parametrisation (pruning's masks), no forward hooks, its own or global."""
    return (
        type(module) is nn.Linear
        and not has_hooks(module)
        and not parametrize.is_parametrized(module)
    )
