"""The readout offset (``layers.base``): forward_offset / step_offset add offset(C) to the SSM
output before the gate / output nonlinearity and leave the recurrence alone."""

import pytest
import torch

from helpers import assert_close
from longssm.layers.longhorn import Longhorn
from longssm.layers.mamba import Mamba
from longssm.layers.mamba2 import Mamba2
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5

F64 = torch.float64


def gated_offset(layer):
    W = torch.randn(layer.d_state, layer.d_inner, dtype=F64, requires_grad=True)
    return W, lambda C: C @ W  # (..., N) -> (..., Di)


def mamba2_offset(layer):
    W = torch.randn(layer.ngroups, layer.d_state, layer.nheads, layer.headdim, dtype=F64,
                    requires_grad=True)
    return W, lambda C: torch.einsum("...gn,gnhp->...hp", C, W)  # (..., G, N) -> (..., H, P)


def lti_offset(layer):
    shape = (layer.d_model, layer.n_modes) if isinstance(layer, S4D) else (layer.n_modes,)
    W = torch.randn(*shape, 2, dtype=F64, requires_grad=True)
    if isinstance(layer, S4D):
        return W, lambda C: 2 * (C * torch.view_as_complex(W)).real.sum(-1)  # (H,)
    return W, lambda C: 2 * (C @ torch.view_as_complex(W)).real  # (H,)


LAYERS = {
    "mamba": (lambda: Mamba(8, d_state=4, d_conv=3, scan="chunk", chunk_size=4), gated_offset),
    "mamba-smr": (lambda: Mamba(8, d_state=4, d_conv=3, smr=3, scan="naive"), gated_offset),
    "mamba-negative": (lambda: Mamba(8, d_state=4, negative_eigenvalues=True), gated_offset),
    "longhorn": (lambda: Longhorn(8, d_state=4, d_conv=2), gated_offset),
    "mamba2": (lambda: Mamba2(16, d_state=4, headdim=8, ngroups=2, chunk_size=4), mamba2_offset),
    "s4d-conv": (lambda: S4D(8, d_state=6, mode="conv"), lti_offset),
    "s4d-recurrent-smr": (lambda: S4D(8, d_state=6, mode="recurrent", smr=2), lti_offset),
    "s5-half-glu2": (lambda: S5(8, d_state=8, blocks=2, activation="half_glu2"), lti_offset),
}


@pytest.mark.parametrize("name", LAYERS)
def test_offset_is_read_out_only_and_every_form_agrees(name):
    build, make_offset = LAYERS[name]
    torch.manual_seed(0)
    layer = build().double()
    W, offset = make_offset(layer)
    x = torch.randn(2, 11, layer.d_model, dtype=F64)
    y0, s0 = layer(x)
    y, s = layer.forward_offset(x, None, offset)
    assert (y - y0).abs().max() > 1e-3, "the offset must change the output"
    for a, b in zip(s, s0):
        assert torch.equal(a, b), "the offset must leave the state alone"
    (g_seq,) = torch.autograd.grad(y.square().sum(), W)

    steps, st = [], None
    for t in range(x.shape[1]):
        y_t, st = layer.step_offset(x[:, t], st, offset)
        steps.append(y_t)
    y_steps = torch.stack(steps, 1)
    assert_close(y_steps, y, name="step loop")
    (g_steps,) = torch.autograd.grad(y_steps.square().sum(), W)
    assert_close(g_steps, g_seq, name="d/d offset parameters, step loop vs sequence")

    y1, s1 = layer.forward_offset(x[:, :4], None, offset)
    y2, s2 = layer.forward_offset(x[:, 4:], s1, offset)
    assert_close(torch.cat([y1, y2], 1), y, name="pieces with the state carried")
    assert_close(s2[0], s[0], name="final state")
