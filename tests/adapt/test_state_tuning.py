"""State tuning: exactness at zero, the initial-state identity, NumPy float64 references, grads."""

import numpy as np
import pytest
import torch

from helpers import assert_close
from longssm.adapt import STATE_METHODS, AdaptError, adapter_tensors, attach, state_adapter
from longssm.layers.mamba import Mamba, MambaState
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5
from longssm.models import ModelConfig, SSMLanguageModel

LAYERS = {
    "mamba": lambda: Mamba(8, d_state=4, d_conv=3, scan="naive"),
    "mamba-noconv-chunk": lambda: Mamba(8, d_state=4, d_conv=0, scan="chunk", chunk_size=4),
    "s4d-conv": lambda: S4D(8, d_state=6, mode="conv"),
    "s4d-recurrent": lambda: S4D(8, d_state=6, mode="recurrent", chunk_size=4),
    "s5": lambda: S5(8, d_state=8, blocks=2),
}


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def small_model(mixer, **kw):
    cfg = ModelConfig(mixer=mixer, vocab_size=11, d_model=8, n_layers=2, d_state=4, **kw)
    return SSMLanguageModel(cfg).double()


@pytest.mark.parametrize("method", STATE_METHODS)
@pytest.mark.parametrize("mixer,kw", [("mamba", {"d_conv": 4}), ("s4d", {}), ("s5", {})],
                         ids=["mamba", "s4d", "s5"])
def test_zero_adapter_gives_bitwise_base_logits(mixer, kw, method):
    model = small_model(mixer, **kw)
    tokens = torch.randint(0, 11, (3, 13))
    base, _ = model(tokens)
    attach(model, method)
    adapted, _ = model(tokens)
    assert torch.equal(adapted, base)


@pytest.mark.parametrize("name", LAYERS)
def test_initial_state_tuning_equals_layer_with_initial_state(name):
    layer = LAYERS[name]().double()
    randomise(layer)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    adapter = state_adapter(layer, "initial-state")
    with torch.no_grad():
        adapter.h0.normal_()
    zeros = layer.initial_state(2, dtype=torch.float64)
    h0 = adapter.h0
    if zeros.ssm.is_complex():
        h0 = torch.view_as_complex(h0)
    start = zeros._replace(ssm=h0.expand_as(zeros.ssm).clone())
    y_ref, s_ref = layer(x, start)
    y, s = adapter(x)
    assert_close(y, y_ref, name="y")
    assert_close(s.ssm, s_ref.ssm, name="final state")
    # an explicit state still wins over the learned start
    y0, _ = adapter(x, zeros)
    assert_close(y0, layer(x, zeros)[0], name="explicit zeros")


def numpy_mamba(layer, x, h_offset, y_offset):
    """Mamba from its equations in NumPy float64, with y_t = C_t·(h_t + h′) + D x_t + y′."""
    w = {k: v.detach().numpy().astype(np.float64) for k, v in layer.state_dict().items()}
    x = x.detach().numpy()
    B_, T, _ = x.shape
    Di, N, R = layer.d_inner, layer.d_state, layer.dt_rank
    xz = x @ w["in_proj.weight"].T
    xs, z = xz[..., :Di], xz[..., Di:]
    K = layer.d_conv
    pad = np.concatenate([np.zeros((B_, K - 1, Di)), xs], axis=1)
    conv = np.stack([(pad[:, t:t + K] * w["conv1d.weight"][:, 0].T).sum(1) for t in range(T)], 1)
    u = conv + w["conv1d.bias"]
    u = u / (1 + np.exp(-u))
    proj = u @ w["x_proj.weight"].T
    dt = np.log1p(np.exp(proj[..., :R] @ w["dt_proj.weight"].T + w["dt_proj.bias"]))
    Bm, Cm = proj[..., R:R + N], proj[..., R + N:]
    A = -np.exp(w["A_log"])
    h = np.zeros((B_, Di, N))
    ys = []
    for t in range(T):
        h = np.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
        y = ((h + h_offset) * Cm[:, t, None, :]).sum(-1) + w["D"] * u[:, t] + y_offset
        ys.append(y * (z[:, t] / (1 + np.exp(-z[:, t]))))
    return np.stack(ys, 1) @ w["out_proj.weight"].T, h


@pytest.mark.parametrize("method", ["state-offset-h", "state-offset-y"])
@pytest.mark.parametrize("scan", ["naive", "chunk", "fused"])
def test_mamba_offset_matches_numpy_reference(method, scan):
    layer = Mamba(8, d_state=4, d_conv=3, scan=scan, chunk_size=4).double()
    randomise(layer)
    adapter = state_adapter(layer, method)
    with torch.no_grad():
        adapter.tensor.normal_()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    h_off = adapter.h_offset.detach().numpy() if method == "state-offset-h" else 0.0
    y_off = adapter.y_offset.detach().numpy() if method == "state-offset-y" else 0.0
    y_ref, h_ref = numpy_mamba(layer, x, h_off, y_off)
    y, state = adapter(x)
    assert_close(y, torch.from_numpy(y_ref), name="y")
    assert_close(state.ssm, torch.from_numpy(h_ref), name="h_T (the offset leaves the state alone)")
    # step by step from zeros gives the same outputs
    s, steps = None, []
    for t in range(x.shape[1]):
        y_t, s = adapter.step(x[:, t], s)
        steps.append(y_t)
    assert_close(torch.stack(steps, 1), y, name="step loop")


def numpy_s4d(layer, x, h_offset):
    """S4D (ZOH) in NumPy: h_t = λ̄ h_{t-1} + B̄ u_t, y_t = 2 Re(Σ C (h_t + h′)) + D u_t, pre-GLU."""
    w = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    lam = -np.exp(w["A_log_re"]) + 1j * w["A_im"]
    dt = np.exp(w["log_dt"])[:, None]
    lam_bar = np.exp(dt * lam)
    B_bar = (lam_bar - 1) / lam * (w["B"][..., 0] + 1j * w["B"][..., 1])
    C = w["C"][..., 0] + 1j * w["C"][..., 1]
    u = x.detach().numpy()
    h = np.zeros((u.shape[0],) + lam.shape, dtype=complex)
    ys = []
    for t in range(u.shape[1]):
        h = lam_bar * h + B_bar * u[:, t, :, None]
        ys.append(2 * ((h + h_offset) * C).sum(-1).real + w["D"] * u[:, t])
    return np.stack(ys, 1), C


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_s4d_offset_h_equals_offset_y_and_numpy(mode):
    layer = S4D(8, d_state=6, mode=mode, chunk_size=4).double()
    randomise(layer)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    off_h = state_adapter(layer, "state-offset-h")
    with torch.no_grad():
        off_h.h_offset.normal_()
    h_prime = torch.view_as_complex(off_h.h_offset.detach()).numpy()
    y_ref, C = numpy_s4d(layer, x, h_prime)
    y, _ = off_h(x)
    assert_close(y, layer._output(torch.from_numpy(y_ref)), name="offset (h) vs NumPy")
    off_y = state_adapter(layer, "state-offset-y")
    with torch.no_grad():
        off_y.y_offset.copy_(torch.from_numpy(2 * (C * h_prime).sum(-1).real))
    assert_close(off_y(x)[0], y, name="offset (y) with y' = 2Re(C h') vs offset (h)")


def test_s5_offset_h_equals_offset_y():
    layer = S5(8, d_state=8, blocks=2).double()
    randomise(layer)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    off_h = state_adapter(layer, "state-offset-h")
    with torch.no_grad():
        off_h.h_offset.normal_()
    h_prime = torch.view_as_complex(off_h.h_offset.detach()).numpy()
    C = torch.view_as_complex(layer.C.detach()).numpy()  # (H, n)
    off_y = state_adapter(layer, "state-offset-y")
    with torch.no_grad():
        off_y.y_offset.copy_(torch.from_numpy(2 * (C @ h_prime).real))
    assert_close(off_y(x)[0], off_h(x)[0], name="S5 offset (y) vs offset (h)")
    # and it is not the base output (the test can fail)
    assert (off_h(x)[0] - layer(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("method", STATE_METHODS)
def test_only_the_methods_tensors_train(method):
    model = small_model("mamba", d_conv=4)
    params = attach(model, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.mixer.{n.split('.')[-1]}" for i, n in
                         enumerate(adapter_tensors(model))}
    assert len(params) == 2 and all(p.requires_grad for p in params)
    logits, _ = model(torch.randint(0, 11, (2, 7)))
    logits.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_unsupported_layer_and_method():
    model = small_model("lru")
    with pytest.raises(AdaptError, match="state tuning supports"):
        attach(model, "state-offset-h")
    with pytest.raises(AdaptError, match="unknown adaptation method"):
        attach(small_model("mamba"), "prefix")


def test_states_carry_unchanged():
    """The offset reads the state out; pieces with the state carried equal one pass."""
    layer = Mamba(8, d_state=4, d_conv=3, scan="chunk", chunk_size=4).double()
    adapter = state_adapter(layer, "initial-state")
    with torch.no_grad():
        adapter.h0.normal_()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    y, s = adapter(x)
    y1, s1 = adapter(x[:, :5])
    y2, s2 = adapter(x[:, 5:], s1)
    assert_close(torch.cat([y1, y2], 1), y, name="pieces")
    assert isinstance(s2, MambaState)
    assert_close(s2.ssm, s.ssm, name="final state")
