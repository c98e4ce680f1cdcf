"""The gated block skeleton shared by Mamba and Longhorn.

    x, z = in_proj(u).chunk(2)          (batch, T, d_inner) each
    x = silu(conv1d_K(x))               causal depthwise convolution, carried state (K - 1 inputs)
    r, b, c = x_proj(x).split(R, N, N)  low-rank input of the step size (Mamba's Δ, Longhorn's β),
                                        and two N-vectors (Mamba's B, C; Longhorn's k, q)
    ... the mixer's scan, with a skip D ...
    out = out_proj(y * silu(z))

``GatedBlock`` builds and validates these modules and gives the zero state; the subclasses add
their scan parameters and their forward / step. Parameter names follow transformers' MambaMixer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from longssm.layers.base import tag_no_weight_decay, tag_ssm_param


class GatedState(NamedTuple):
    """State of one gated block.

    ssm: (batch, d_inner, d_state) the scan's state.
    conv: (batch, d_inner, max(d_conv - 1, 0)) the last d_conv - 1 inputs of the causal
        convolution, oldest first (zero width when there is no convolution).
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
        """Zeros: ssm (batch, d_inner, d_state), conv (batch, d_inner, max(d_conv - 1, 0))."""
        device = self.D.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return self.STATE(
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
            conv=torch.zeros(
                batch_size, self.d_inner, max(self.d_conv - 1, 0), device=device, dtype=dtype
            ),
        )

    def _split_x_proj(self, x: torch.Tensor):
        """x_proj(x) split into the low-rank step input (..., R) and two (..., N) vectors."""
        return torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
