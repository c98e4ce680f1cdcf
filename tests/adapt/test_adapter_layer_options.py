"""State adapters run the layer's own forward, so every layer option carries over: a zero adapter
is bitwise the base layer and initial-state tuning is the layer from state h_0, for options the
adapters used to re-implement (or miss): SMR gates, negative eigenvalues, S5's activations."""

import pytest
import torch

from helpers import assert_close
from longssm.adapt import STATE_METHODS, state_adapter
from longssm.layers.longhorn import Longhorn
from longssm.layers.mamba import Mamba
from longssm.layers.mamba2 import Mamba2
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5

LAYERS = {
    "mamba-smr": lambda: Mamba(8, d_state=4, d_conv=3, smr=3),
    "mamba-negative": lambda: Mamba(8, d_state=4, d_conv=2, negative_eigenvalues=True),
    "longhorn": lambda: Longhorn(8, d_state=4, d_conv=3),
    "mamba2-noconv": lambda: Mamba2(16, d_state=4, headdim=8, d_conv=0, chunk_size=4),
    "s4d-smr": lambda: S4D(8, d_state=6, smr=2),
    "s5-full-glu": lambda: S5(8, d_state=8, blocks=2, activation="full_glu"),
}


@pytest.mark.parametrize("method", STATE_METHODS)
@pytest.mark.parametrize("name", LAYERS)
def test_zero_adapter_is_the_layer_bitwise(name, method):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    adapter = state_adapter(layer, method)
    x = torch.randn(2, 9, layer.d_model, dtype=torch.float64)
    (y, s), (y0, s0) = adapter(x), layer(x)
    assert torch.equal(y, y0)
    assert all(torch.equal(a, b) for a, b in zip(s, s0))
    (y_t, s_t), (y0_t, s0_t) = adapter.step(x[:, 0], None), layer.step(x[:, 0], None)
    assert torch.equal(y_t, y0_t)
    assert all(torch.equal(a, b) for a, b in zip(s_t, s0_t))


@pytest.mark.parametrize("name", LAYERS)
def test_initial_state_adapter_is_the_layer_from_h0(name):
    torch.manual_seed(1)
    layer = LAYERS[name]().double()
    adapter = state_adapter(layer, "initial-state")
    with torch.no_grad():
        adapter.h0.normal_()
    x = torch.randn(2, 9, layer.d_model, dtype=torch.float64)
    zeros = layer.initial_state(2, dtype=torch.float64)
    h0 = adapter.h0.detach()
    h0 = torch.view_as_complex(h0) if zeros.ssm.is_complex() else h0
    start = zeros._replace(ssm=h0.to(zeros.ssm.dtype).expand_as(zeros.ssm).clone())
    y, s = adapter(x)
    y_ref, s_ref = layer(x, start)
    assert (y - layer(x)[0]).abs().max() > 1e-6, "h_0 must change the output"
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref.ssm, name="final state")
    steps, st = [], None
    for t in range(x.shape[1]):
        y_t, st = adapter.step(x[:, t], st)
        steps.append(y_t)
    assert_close(torch.stack(steps, 1), y, name="step loop")
