"""GRU and LSTM baselines with the longssm state protocol (non-linear recurrences, no SSM).

Each wraps one ``torch.nn.GRU`` / ``torch.nn.LSTM`` layer (batch-first) followed by a linear
projection back to d_model. They show how the LongSSM state-initialisation policies behave on
classic gated RNNs, whose state is bounded by their gates rather than by stable eigenvalues.

Glossary (paper symbol -> code name, shape):
    D        d_model (input and output width)
    H        hidden (RNN width; 0 = d_model)
    h_t      GRUState.h / LSTMState.h    (batch, H)
    c_t      LSTMState.c (cell state)     (batch, H)
    W_out    out_proj                     Linear(H, D)

GRU:  r, z = σ(W_r x + U_r h + b), σ(W_z x + U_z h + b);  n = tanh(W_n x + b + r ⊙ (U_n h + b'))
      h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}                               (Cho et al., 2014)
LSTM: i, f, o = σ(...), g = tanh(...);  c_t = f ⊙ c_{t-1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)
                                                                    (Hochreiter & Schmidhuber, 1997)
Output: y_t = W_out h_t. ``step`` runs the same module on a length-1 sequence. Option
(``ModelConfig.mixer_options``): ``hidden`` (default 0 = d_model). ``d_state``, ``expand``,
``d_conv`` and ``eigen_param`` are not used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from longssm.layers.base import check_input, check_state, tag_no_weight_decay


class GRUState(NamedTuple):
    """GRU layer state."""

    h: torch.Tensor
    """(batch, hidden) the hidden state h_t."""


class LSTMState(NamedTuple):
    """LSTM layer state."""

    h: torch.Tensor
    """(batch, hidden) the hidden state h_t."""
    c: torch.Tensor
    """(batch, hidden) the cell state c_t."""


class _TorchRNN(nn.Module):
    """Shared body: one ``torch.nn`` recurrent layer, then ``out_proj``; subclasses set the cell."""

    cell_class: type[nn.Module]
    state_class: type[NamedTuple]
    name: str

    def __init__(self, d_model: int, hidden: int = 0) -> None:
        super().__init__()
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
            raise ValueError(f"{self.name}: hidden must be a non-negative integer, got {hidden!r}")
        self.d_model = d_model
        self.hidden = hidden or d_model
        self.rnn = self.cell_class(d_model, self.hidden, num_layers=1, batch_first=True)
        self.out_proj = nn.Linear(self.hidden, d_model)
        for name, param in self.named_parameters():
            if name.endswith("bias") or ".bias_" in name:
                tag_no_weight_decay(param)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden={self.hidden}"

    def initial_state(self, batch_size: int, device=None, dtype=None):
        """Zeros, every field (batch, hidden)."""
        weight = self.out_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        n_fields = len(self.state_class._fields)
        return self.state_class(
            *(
                torch.zeros(batch_size, self.hidden, device=device, dtype=dtype)
                for _ in range(n_fields)
            )
        )

    def _run(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
        """x (batch, T, D) -> RNN outputs (batch, T, H) and the new state."""
        batch, T, _ = x.shape
        if state is None:
            state = self.initial_state(batch, x.device, x.dtype)
        else:
            check_state(state, self.initial_state(batch, x.device, x.dtype), self.name)
        if T == 0:
            return x.new_zeros(batch, 0, self.hidden), state
        # torch's recurrent modules want (num_layers, batch, H) states
        packed = tuple(t.to(x.dtype)[None].contiguous() for t in state)
        out, final = self.rnn(x, packed[0] if len(packed) == 1 else packed)  # (B, T, H)
        final = (final,) if isinstance(final, torch.Tensor) else final
        return out, self.state_class(*(t[0] for t in final))

    def forward(self, x: torch.Tensor, state=None):
        """Args: x (batch, T, d_model); state or None for zeros. Returns (y (batch, T, d_model), state)."""
        check_input(x, self.d_model)
        out, state = self._run(x, state)  # (B, T, H)
        return self.out_proj(out), state

    def step(self, x_t: torch.Tensor, state):
        """Args: x_t (batch, d_model); state. Returns (y_t (batch, d_model), state)."""
        check_input(x_t, self.d_model, name="x_t", ndim=2)
        out, state = self._run(x_t[:, None], state)  # (B, 1, H)
        return self.out_proj(out[:, 0]), state


class GRU(_TorchRNN):
    """GRU mixer: ``forward(x, state=None) -> (y, GRUState)``.

    Args:
        d_model: input and output width.
        hidden: GRU width (0 = d_model).
    """

    cell_class = nn.GRU
    state_class = GRUState
    name = "GRU"


class LSTM(_TorchRNN):
    """LSTM mixer: ``forward(x, state=None) -> (y, LSTMState)``.

    Args:
        d_model: input and output width.
        hidden: LSTM width (0 = d_model).
    """

    cell_class = nn.LSTM
    state_class = LSTMState
    name = "LSTM"
