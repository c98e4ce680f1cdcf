"""GRU / LSTM baselines: the torch module's recurrence, split invariance, step == forward."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.layers.rnn import GRU, LSTM, GRUState, LSTMState
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer

D_MODEL = 6
CLASSES = {"gru": GRU, "lstm": LSTM}


def make(name, hidden=0):
    torch.manual_seed(0)
    return CLASSES[name](D_MODEL, hidden=hidden).double()


def random_state(layer, batch):
    return type(layer.initial_state(1))(
        *(torch.randn_like(t) for t in layer.initial_state(batch, dtype=torch.float64))
    )


@pytest.mark.parametrize("name", list(CLASSES))
def test_split_sequence_and_step_loop(name):
    layer = make(name, hidden=5)
    x = torch.randn(2, 15, D_MODEL, dtype=torch.float64)
    state = random_state(layer, 2)
    full, final = layer(x, state)
    pieces, s = [], state
    for a, b in [(0, 4), (4, 5), (5, 5), (5, 15)]:
        y, s = layer(x[:, a:b], s)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), full, name="split y")
    ys, s2 = [], state
    for t in range(15):
        y_t, s2 = layer.step(x[:, t], s2)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), full, name="step y")
    for a, b, c in zip(s, s2, final):
        assert_close(a, c, name="split state")
        assert_close(b, c, name="step state")


def test_gru_is_the_gru_recurrence():
    """One step against the GRU equations written out with the module's weights."""
    layer = make("gru")
    x = torch.randn(3, D_MODEL, dtype=torch.float64)
    h = torch.randn(3, D_MODEL, dtype=torch.float64)
    _, state = layer.step(x, GRUState(h))
    W_r, W_z, W_n = layer.rnn.weight_ih_l0.chunk(3)
    U_r, U_z, U_n = layer.rnn.weight_hh_l0.chunk(3)
    b_r, b_z, b_n = layer.rnn.bias_ih_l0.chunk(3)
    c_r, c_z, c_n = layer.rnn.bias_hh_l0.chunk(3)
    r = torch.sigmoid(x @ W_r.T + b_r + h @ U_r.T + c_r)
    z = torch.sigmoid(x @ W_z.T + b_z + h @ U_z.T + c_z)
    n = torch.tanh(x @ W_n.T + b_n + r * (h @ U_n.T + c_n))
    assert_close(state.h, (1 - z) * n + z * h, name="h")


def test_state_shapes_options_and_errors():
    gru = build_mixer(ModelConfig(mixer="gru", d_model=8), 0)
    assert gru.initial_state(2).h.shape == (2, 8)
    lstm = build_mixer(ModelConfig(mixer="lstm", d_model=8, mixer_options={"hidden": 12}), 0)
    state = lstm.initial_state(2)
    assert isinstance(state, LSTMState) and state.h.shape == state.c.shape == (2, 12)
    with pytest.raises(ValueError, match="valid options"):
        build_mixer(ModelConfig(mixer="gru", mixer_options={"layers": 2}), 0)
    with pytest.raises(ValueError, match="hidden"):
        LSTM(8, hidden=-1)
    with pytest.raises(TypeError, match="LSTMState"):
        lstm(torch.randn(2, 3, 8), GRUState(torch.zeros(2, 12)))
