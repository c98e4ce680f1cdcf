"""SMR gate (layers/smr.py) against a float64 NumPy reference, and SMR inside S4D / S5 / Mamba:
identity limits, causality, pieces == one pass, prefill + step == forward, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_close, gradcheck_with_initial_state
from longssm.layers.mamba import Mamba
from longssm.layers.s4d import S4D, S4DSMRState
from longssm.layers.s5 import S5, S5SMRState
from longssm.layers.smr import SMRGate


def gate_reference(u: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ũ_k = u_k ⊙ σ(Σ_{i<m} W_i ⊙ u_{k−i} + b), zeros before the start; u (B, T, C), W (m, C)."""
    batch, T, C = u.shape
    out = np.empty_like(u)
    for k in range(T):
        pre = b.copy()[None].repeat(batch, 0)  # (B, C)
        for i in range(W.shape[0]):
            if k - i >= 0:
                pre = pre + W[i] * u[:, k - i]
        out[:, k] = u[:, k] / (1 + np.exp(-pre))
    return out


@pytest.mark.parametrize("m", [1, 2, 4])
def test_gate_matches_numpy_reference(m):
    torch.manual_seed(0)
    gate = SMRGate(5, m).double()
    with torch.no_grad():
        gate.conv1d.weight.normal_()
        gate.conv1d.bias.normal_()
    u = torch.randn(2, 9, 5, dtype=torch.float64)
    y, _ = gate(u, None)
    # conv1d.weight[:, 0, j] multiplies u_{k-(m-1-j)}: W_i = weight[:, 0, m-1-i]
    W = gate.conv1d.weight[:, 0, :].detach().numpy()[:, ::-1].T  # (m, C)
    ref = gate_reference(u.numpy(), W, gate.conv1d.bias.detach().numpy())
    assert_close(y, torch.from_numpy(ref), name="SMR gate vs NumPy")


def test_zero_taps_and_open_gate_are_the_identity():
    u = torch.randn(2, 7, 4, dtype=torch.float64)
    y0, h0 = SMRGate(4, 0).double()(u, None)
    assert torch.equal(y0, u) and h0.shape == (2, 4, 0)
    gate = SMRGate(4, 3, bias_init=60.0).double()
    y, _ = gate(u, None)
    assert_close(y, u, name="b -> +inf")
    gate_closed = SMRGate(4, 3, bias_init=-60.0).double()
    assert gate_closed(u, None)[0].abs().max() < 1e-20


def test_gate_is_causal():
    torch.manual_seed(1)
    gate = SMRGate(3, 3).double()
    with torch.no_grad():
        gate.conv1d.weight.normal_()
    u = torch.randn(1, 8, 3, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: gate(v, None)[0], u)  # (1,8,3,1,8,3)
    J = J[0, :, :, 0].abs().sum((1, 3))  # (T_out, T_in)
    assert J.triu(1).abs().max() == 0, "output depends on a future input"
    assert J.tril(-3).abs().max() == 0, "output depends on an input older than m steps"
    assert J.diagonal(-2).min() > 0, "the oldest tap is not used"


def layers():
    torch.manual_seed(0)
    return {
        "s4d": S4D(6, 4, smr=3).double(),
        "s4d-recurrent": S4D(6, 4, smr=2, mode="recurrent").double(),
        "s5": S5(6, 4, smr=3).double(),
        "mamba": Mamba(6, 4, expand=2, d_conv=3, smr=3, scan="chunk", chunk_size=4).double(),
        "mamba-noconv": Mamba(6, 4, expand=2, d_conv=0, smr=2, scan="naive").double(),
    }


@pytest.mark.parametrize("name", list(layers()))
def test_layer_with_smr_pieces_and_steps_equal_one_pass(name):
    layer = layers()[name]
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    y, final = layer(x)
    y1, s1 = layer(x[:, :4])
    y2, s2 = layer(x[:, 4:], s1)
    assert_close(torch.cat([y1, y2], 1), y, name=f"{name}: pieces")
    for a, b in zip(s2, final):
        assert_close(a, b, name=f"{name}: final state")
    state, ys = s1, []
    for t in range(4, 11):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y[:, 4:], name=f"{name}: prefill + step")
    if name.startswith("s4d"):
        assert type(final) is S4DSMRState
    if name == "s5":
        assert type(final) is S5SMRState


@pytest.mark.parametrize("name", ["s4d", "s5", "mamba"])
def test_layer_with_smr_gradcheck_including_initial_state(name):
    layer = layers()[name]
    x = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    gradcheck_with_initial_state(layer, x)
