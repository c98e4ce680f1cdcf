"""Mamba-2 adapters: state tuning (h_0, h′ per head, y′) and LoRA on in_proj / out_proj.

Exact at zero (bitwise the base logits), initial-state tuning == the layer started from H, and an
independent NumPy float64 Mamba-2 written from its equations with y_t = C_t·(h_t + h′) + D x_t.
"""

import numpy as np
import pytest
import torch

from helpers import assert_close
from longssm.adapt import STATE_METHODS, adapter_tensors, attach, state_adapter
from longssm.layers.mamba2 import Mamba2
from longssm.models import ModelConfig, SSMLanguageModel


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def small_model(**options):
    cfg = ModelConfig(mixer="mamba2", vocab_size=11, d_model=8, n_layers=2, d_state=4, d_conv=4,
                      mixer_options={"headdim": 4, "chunk_size": 4, **options})
    return SSMLanguageModel(cfg).double()


def layer(scan="chunk", ngroups=2):
    m = Mamba2(8, d_state=4, d_conv=3, headdim=4, ngroups=ngroups, chunk_size=4, scan=scan).double()
    randomise(m)
    return m


@pytest.mark.parametrize("method", [*STATE_METHODS, "lora:3"])
def test_zero_adapter_gives_bitwise_base_logits(method):
    model = small_model()
    tokens = torch.randint(0, 11, (3, 13))
    base, base_state = model(tokens)
    attach(model, method)
    adapted, state = model(tokens)
    assert torch.equal(adapted, base)
    assert all(torch.equal(a, b) for s, t in zip(state, base_state) for a, b in zip(s, t))


@pytest.mark.parametrize("scan", ["naive", "chunk"])
def test_initial_state_tuning_equals_layer_with_initial_state(scan):
    m = layer(scan)
    adapter = state_adapter(m, "initial-state")
    with torch.no_grad():
        adapter.h0.normal_()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    zeros = m.initial_state(2, dtype=torch.float64)
    start = zeros._replace(ssm=adapter.h0.detach().expand_as(zeros.ssm).clone())
    y_ref, s_ref = m(x, start)
    y, s = adapter(x)
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref.ssm, name="final state")
    assert (y - m(x)[0]).abs().max() > 1e-3  # h_0 changes the output (the test can fail)
    assert_close(adapter(x, zeros)[0], m(x, zeros)[0], name="explicit zeros win")


def numpy_mamba2(m, x, h_offset, y_offset):
    """Mamba-2 from its equations in NumPy float64:
    h_t = exp(Δ_t a_h) h_{t-1} + Δ_t x_t B_tᵀ,  y_t = (h_t + h′) C_t + D x_t + y′,
    out = out_proj(rmsnorm_groups(y ⊙ silu(z)) · w)."""
    w = {k: v.detach().numpy().astype(np.float64) for k, v in m.state_dict().items()}
    x = x.detach().numpy()
    Bt, T, _ = x.shape
    Di, N, H, P, G, K = m.d_inner, m.d_state, m.nheads, m.headdim, m.ngroups, m.d_conv
    proj = x @ w["in_proj.weight"].T
    z, xBC, dt_raw = proj[..., :Di], proj[..., Di:Di + m.conv_dim], proj[..., Di + m.conv_dim:]
    pad = np.concatenate([np.zeros((Bt, K - 1, m.conv_dim)), xBC], axis=1)
    u = np.stack([(pad[:, t:t + K] * w["conv1d.weight"][:, 0].T).sum(1) for t in range(T)], 1)
    u = u + w["conv1d.bias"]
    u = u / (1 + np.exp(-u))
    xs = u[..., :Di].reshape(Bt, T, H, P)
    Bm = u[..., Di:Di + G * N].reshape(Bt, T, G, N)
    Cm = u[..., Di + G * N:].reshape(Bt, T, G, N)
    dt = np.log1p(np.exp(dt_raw + w["dt_bias"]))  # (b, T, H)
    a = -np.exp(w["A_log"])
    group = np.arange(H) // (H // G)
    h = np.zeros((Bt, H, P, N))
    outs = []
    for t in range(T):
        Bh, Ch = Bm[:, t, group], Cm[:, t, group]  # (b, H, N)
        h = (np.exp(dt[:, t] * a)[..., None, None] * h
             + (dt[:, t, :, None] * xs[:, t])[..., None] * Bh[:, :, None, :])
        y = ((h + h_offset) * Ch[:, :, None, :]).sum(-1) + w["D"][:, None] * xs[:, t]
        y = y.reshape(Bt, Di) + y_offset
        g = (y * z[:, t] / (1 + np.exp(-z[:, t]))).reshape(Bt, G, Di // G)
        g = g / np.sqrt((g ** 2).mean(-1, keepdims=True) + m.norm.eps)
        outs.append(g.reshape(Bt, Di) * w["norm.weight"])
    return np.stack(outs, 1) @ w["out_proj.weight"].T, h


@pytest.mark.parametrize("method", ["state-offset-h", "state-offset-y"])
@pytest.mark.parametrize("scan", ["naive", "chunk"])
def test_mamba2_offset_matches_numpy_reference(method, scan):
    m = layer(scan)
    adapter = state_adapter(m, method)
    with torch.no_grad():
        adapter.tensor.normal_()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    h_off = adapter.h_offset.detach().numpy() if method == "state-offset-h" else 0.0
    y_off = adapter.y_offset.detach().numpy() if method == "state-offset-y" else 0.0
    y_ref, h_ref = numpy_mamba2(m, x, h_off, y_off)
    y, state = adapter(x)
    assert_close(y, torch.from_numpy(y_ref), name="y")
    assert_close(state.ssm, torch.from_numpy(h_ref), name="h_T (the offset leaves the state alone)")
    base_ref, _ = numpy_mamba2(m, x, 0.0, 0.0)
    assert np.abs(base_ref - y_ref).max() > 1e-3  # the offset matters (the test can fail)
    s, steps = None, []
    for t in range(x.shape[1]):
        y_t, s = adapter.step(x[:, t], s)
        steps.append(y_t)
    assert_close(torch.stack(steps, 1), y, name="step loop")
    y1, s1 = adapter(x[:, :5])
    y2, _ = adapter(x[:, 5:], s1)
    assert_close(torch.cat([y1, y2], 1), y, name="pieces with the state carried")


@pytest.mark.parametrize("method", [*STATE_METHODS, "lora:2"])
def test_only_the_methods_tensors_train(method):
    model = small_model()
    params = attach(model, method)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    names = adapter_tensors(model)
    assert len(trainable) == len(names) == len(params) == (8 if method == "lora:2" else 2)
    shapes = {tuple(p.shape) for p in params}
    if method in ("initial-state", "state-offset-h"):
        assert shapes == {(4, 4, 4)}  # (nheads, headdim, d_state)
    elif method == "state-offset-y":
        assert shapes == {(16,)}
    logits, _ = model(torch.randint(0, 11, (2, 7)))
    logits.square().sum().backward()
    # LoRA: A's gradient is zero while B = 0 (the paper's init), so only B is checked
    grown = [t for n, t in names.items() if not n.endswith("lora_A")]
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in grown)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_mamba2_lora_equals_merged_weights():
    """LoRA with B ≠ 0 equals the base layer whose in_proj / out_proj weights are merged."""
    m = layer()
    merged = Mamba2(8, d_state=4, d_conv=3, headdim=4, ngroups=2, chunk_size=4).double()
    merged.load_state_dict(m.state_dict())
    model_like = torch.nn.Module()
    model_like.blocks = torch.nn.ModuleList([torch.nn.Module()])
    model_like.blocks[0].mixer = m
    attach(model_like, "lora:2:3")
    with torch.no_grad():
        for name in ("in_proj", "out_proj"):
            lora = getattr(m, name)
            lora.lora_B.normal_()
            getattr(merged, name).weight.add_(1.5 * lora.lora_B @ lora.lora_A)
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    assert_close(m(x)[0], merged(x)[0], name="LoRA vs merged weights")
