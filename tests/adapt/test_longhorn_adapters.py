"""Longhorn state tuning and LoRA (Mamba's adapters: same state (d_inner, N), readout q_t, gate).

Reference for offset (h), written from the layer's equations in NumPy float64 (no convolution, so
every term is explicit): xs = silu(x W_x + b_x), z = x W_z + b_z, q = xs W_q (the last N rows of
x_proj), and the adapter adds (q_t h′ᵀ ⊙ silu(z_t)) W_outᵀ to the base layer's output.
"""

import numpy as np
import torch

from longssm.adapt import attach, state_adapter
from longssm.layers.longhorn import Longhorn
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.adapters import merge_adapter


def _silu(v):
    return v / (1 + np.exp(-v))


def test_offset_h_adds_q_h_prime_inside_the_gate():
    torch.manual_seed(0)
    layer = Longhorn(8, d_state=4, d_conv=0).double()
    adapter = state_adapter(layer, "state-offset-h")
    with torch.no_grad():
        adapter.h_offset.normal_()
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    got = (adapter(x)[0] - layer(x)[0]).detach().numpy()

    X = x.numpy()
    W_in, b_in = layer.in_proj.weight.detach().numpy(), layer.in_proj.bias
    b_in = np.zeros(W_in.shape[0]) if b_in is None else b_in.detach().numpy()
    Di, N = layer.d_inner, layer.d_state
    pre = X @ W_in.T + b_in
    xs, z = _silu(pre[..., :Di]), pre[..., Di:]
    q = (xs @ layer.x_proj.weight.detach().numpy().T)[..., -N:]  # (B, T, N)
    h_prime = adapter.h_offset.detach().numpy()  # (Di, N)
    want = ((q @ h_prime.T) * _silu(z)) @ layer.out_proj.weight.detach().numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_lora_on_longhorn_zero_is_bitwise_and_merges_exactly():
    torch.manual_seed(1)
    cfg = ModelConfig(mixer="longhorn", d_model=16, n_layers=2, d_state=4, vocab_size=11)
    model = SSMLanguageModel(cfg).double()
    tokens = torch.randint(0, 11, (2, 9))
    base = model(tokens)[0].detach().clone()
    params = attach(model, "lora:2")
    assert params and all(p.requires_grad for p in params)
    assert torch.equal(model(tokens)[0], base)  # B = 0 at the start
    with torch.no_grad():
        for p in params:
            p.normal_()
    adapted = model(tokens)[0].detach()
    assert (adapted - base).abs().max() > 1e-6
    merged = merge_adapter(model)
    torch.testing.assert_close(merged(tokens)[0], adapted, rtol=0, atol=1e-12)
