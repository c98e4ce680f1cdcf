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
    layer = IDS4(4, 6, act="softmax").double()
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


def test_transition_represents_the_a5_word_problem():
    """Merrill et al.: a dense input-dependent transition tracks permutations in one layer. With
    one-hot inputs, A(g) = P_g (the permutation matrix, P_g[g(i), i] = 1) and B x(g) = P_g v - v,
    the recurrence from h_0 = 0 gives h_t = P_{g_t}...P_{g_1} v - v: with v = (0, 1, 2, 3, 4),
    h_t + v is the inverse of the running product g_1·…·g_t (composed by the group table)."""
    from longssm.tasks.groups import get_group

    group = get_group("a5")
    G, N = group.order, 5
    P = torch.zeros(G, N, N, dtype=torch.float64)
    for g, images in enumerate(group.elements):
        P[g, torch.as_tensor(images), torch.arange(N)] = 1.0
    v = torch.arange(N, dtype=torch.float64)
    layer = IDS4(G, N, act="identity").double()
    with torch.no_grad():
        layer.W.copy_(P)
        layer.W0.zero_()
        layer.B.copy_((P @ v - v).T)  # (N, G)
        layer.C.zero_()
        layer.C[:N] = torch.eye(N, dtype=torch.float64)
        layer.D.zero_()
    words = torch.randint(G, (4, 30), generator=torch.Generator().manual_seed(0))
    y, _ = layer(torch.nn.functional.one_hot(words, G).double())
    products = group.running_products(words.numpy())  # (4, 30) element indices
    expected = torch.as_tensor(group.elements[products].argsort(-1), dtype=torch.float64)
    assert_close(y[..., :N] + v, expected, name="h_t + v")


@pytest.mark.parametrize("act", ["softmax", "tanh", "identity"])
def test_identity_init_keeps_the_state(act):
    """The default init starts every A_t near the identity at unit-RMS inputs (the ``uniform``
    init starts softmax near 11ᵀ/N, which erases all but the state's sum)."""
    torch.manual_seed(3)
    x = torch.randn(2, 50, 32, dtype=torch.float64)
    eye = torch.eye(16, dtype=torch.float64)
    A = IDS4(32, 16, act=act, init="identity").double().transitions(x)
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    off = (A - eye * diag[..., None]).abs().sum(-2) / 15  # mean |off-diagonal| of each column
    assert diag.mean() > 0.9 and off.mean() < 0.2, (diag.mean(), off.mean())
    uniform = IDS4(32, 16, act="softmax", init="uniform").double().transitions(x)
    assert (uniform - 1 / 16).abs().mean() < 0.02  # every entry near 1/N, the diagonal too
    with pytest.raises(ValueError, match="init must be one of"):
        IDS4(4, 3, init="zeros")
