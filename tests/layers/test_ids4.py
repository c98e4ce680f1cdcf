"""IDS4 (layers/ids4.py) against an explicit float64 matrix-product loop, incl. gradients w.r.t.
the parameters and the initial state; state protocol."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, linear_loss_grads
from longssm.layers.ids4 import IDS4, IDS4State


def explicit_loop(layer: IDS4, x: torch.Tensor, h0: torch.Tensor):
    """h_t = A_t h_{t-1} + B x_t with A_t built entry by entry from Σ_d x_{t,d} W_d + W_0."""
    batch, T, H = x.shape
    N = layer.d_state
    h, ys = h0, []
    for t in range(T):
        rows = []
        for b in range(batch):
            pre = layer.W0.clone()
            for d in range(H):
                pre = pre + x[b, t, d] * layer.W[d]
            if layer.act == "softmax":
                A = torch.exp(pre) / torch.exp(pre).sum(0, keepdim=True)  # columns sum to 1
            elif layer.act == "tanh":
                A = torch.tanh(pre)
            else:
                A = pre
            rows.append(A @ h[b] + layer.B @ x[b, t])
        h = torch.stack(rows)  # (B, N)
        ys.append(h @ layer.C.T + layer.D * x[:, t])
    assert h.shape == (batch, N)
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("act", ["softmax", "tanh", "identity"])
def test_forward_equals_matrix_product_loop_with_gradients(act):
    torch.manual_seed(0)
    layer = IDS4(5, 3, act=act).double()
    with torch.no_grad():
        layer.W0.normal_()
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y, state = layer(x, IDS4State(h0))
    y_ref, h_ref = explicit_loop(layer, x, h0)
    assert_close(y, y_ref, name="y")
    assert_close(state.ssm, h_ref, name="h_T")
    leaves = [x, h0, layer.W, layer.W0, layer.B, layer.C, layer.D]
    grads = linear_loss_grads(y, state.ssm, leaves)
    for g, g_ref, n in zip(
        grads, linear_loss_grads(y_ref, h_ref, leaves), ["x", "h0", "W", "W0", "B", "C", "D"]
    ):
        assert_close(g, g_ref, name=f"d/d{n}")
    assert grads[1].abs().max() > 0


def test_pieces_and_steps_equal_one_pass():
    torch.manual_seed(1)
    layer = IDS4(4, 5).double()
    x = torch.randn(3, 10, 4, dtype=torch.float64)
    y, final = layer(x)
    y1, s1 = layer(x[:, :3])
    y2, s2 = layer(x[:, 3:], s1)
    assert_close(torch.cat([y1, y2], 1), y, name="pieces")
    assert_close(s2.ssm, final.ssm, name="state")
    state, ys = s1, []
    for t in range(3, 10):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y[:, 3:], name="steps")


def test_softmax_transitions_are_column_stochastic_and_state_grows_at_most_linearly():
    torch.manual_seed(2)
    layer = IDS4(4, 6).double()
    x = torch.randn(1, 500, 4, dtype=torch.float64)
    A = layer.transitions(x)
    assert_close(A.sum(-2), torch.ones(1, 500, 6, dtype=torch.float64), name="column sums")
    _, state = layer(x)
    # ‖h_t‖₁ <= ‖h_{t-1}‖₁ + ‖B x_t‖₁: a bound by the summed inputs (linear in length)
    bound = (x[0] @ layer.B.T).abs().sum()
    assert state.ssm.abs().sum() <= bound


def test_bad_options():
    with pytest.raises(ValueError, match="act must be one of"):
        IDS4(4, 3, act="relu")
    with pytest.raises(ValueError, match="state.ssm must have shape"):
        IDS4(4, 3)(torch.randn(2, 3, 4), IDS4State(torch.zeros(2, 4)))
