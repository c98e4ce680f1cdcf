"""The causal depthwise convolution with carried history: pieces == one padded pass == steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_close
from longssm.layers.conv import causal_conv, causal_conv_step
from longssm.ops import causal_conv as conv_ops


@pytest.mark.parametrize("kernel", [2, 4], ids=["k2", "k4"])
def test_pieces_and_steps_equal_padded_reference(kernel):
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, kernel, groups=6).double()
    x = torch.randn(3, 11, 6, dtype=torch.float64)
    # reference: zero left padding, the classic causal convolution
    ref = F.conv1d(F.pad(x.transpose(1, 2), (kernel - 1, 0)), conv.weight, conv.bias, groups=6)
    ref = ref.transpose(1, 2)  # (B, T, C)
    full, history = causal_conv(conv, x, None)
    assert_close(full, ref, name="one pass")
    assert_close(history, x[:, -(kernel - 1) :].transpose(1, 2), name="history")
    pieces, h = [], None
    for a, b in [(0, 1), (1, 5), (5, 11)]:
        y, h = causal_conv(conv, x[:, a:b], h)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), ref, name="pieces")
    steps, h = [], torch.zeros(3, 6, kernel - 1, dtype=torch.float64)
    for t in range(11):
        y_t, h = causal_conv_step(conv, x[:, t], h)
        steps.append(y_t)
    assert_close(torch.stack(steps, 1), ref, name="steps")


def test_no_convolution_passes_through():
    x = torch.randn(2, 5, 3)
    y, history = causal_conv(None, x, None)
    assert torch.equal(y, x) and history.shape == (2, 3, 0)


@pytest.mark.parametrize("path", ["fused", "torch", "naive"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_layer_conv_paths_equal_padded_reference(path, activation):
    if path == "fused" and not conv_ops.numba_available():
        pytest.skip("needs numba")
    torch.manual_seed(0)
    conv = nn.Conv1d(5, 5, 4, groups=5).double()
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), conv.weight, conv.bias, groups=5)
    ref = ref.transpose(1, 2)  # (B, T, C)
    y, history = causal_conv(conv, x, None, activation=activation, path=path)
    assert_close(y, F.silu(ref) if activation else ref, name=f"{path} {activation}")
    assert_close(history, x[:, -3:].transpose(1, 2), name="history")


def torch_conv_layers(monkeypatch) -> list[str]:
    """Make the layers' convolution run the F.conv1d form (as before the fused kernels); returns
    the list of the forms the patched op was asked for (to check that the patch took effect)."""
    import longssm.layers.conv as layer_conv

    asked = []

    def torch_form(*args, path="auto", **kwargs):
        asked.append(path)
        return conv_ops.causal_conv(*args, path="torch", **kwargs)

    monkeypatch.setattr(layer_conv, "conv_op", torch_form)
    return asked


def graph_nodes(fn) -> set[str]:
    """The class names of every autograd node reachable from ``fn``."""
    seen, stack, names = set(), [fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.skipif(not conv_ops.numba_available(), reason="needs numba")
@pytest.mark.parametrize("name", ["mamba", "longhorn", "mamba2"])
def test_models_with_fused_conv_match_the_torch_conv_in_float32(name, monkeypatch):
    """Mamba, Longhorn and Mamba-2 blocks (convolution + fused SiLU on the fused kernels) give the
    outputs, states and parameter gradients of the F.conv1d form within float32 round-off."""
    from longssm.layers.longhorn import Longhorn
    from longssm.layers.mamba import Mamba
    from longssm.layers.mamba2 import Mamba2

    torch.manual_seed(0)
    cls = {"mamba": Mamba, "longhorn": Longhorn, "mamba2": Mamba2}[name]
    kwargs = {"mamba2": {"headdim": 8, "chunk_size": 8}}.get(name, {})
    layer = cls(d_model=16, d_state=4, d_conv=4, **kwargs)
    x = torch.randn(3, 37, 16)
    state = layer.initial_state(3)
    state = type(state)(*(torch.randn_like(t) for t in state))
    results, asked = [], []
    for patch in (False, True):
        if patch:
            asked = torch_conv_layers(monkeypatch)
        layer.zero_grad()
        y, final = layer(x, state)
        (y.square().sum() + sum(t.square().sum() for t in final)).backward()
        results.append((y, *final, *(p.grad.clone() for p in layer.parameters())))
        # the unpatched pass ran the fused kernels: its graph holds their autograd node
        assert (not patch) == ("_FusedConvBackward" in graph_nodes(y.grad_fn)), name
    assert asked == ["auto"], asked
    for i, (got, want) in enumerate(zip(*results)):
        assert_close(got, want, atol=1e-4, rtol=1e-4, name=f"{name} output/state/grad {i}")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("padding", [0, 3, "valid", "same"],
                         ids=["mamba", "mamba2-padded", "valid", "same"])
@pytest.mark.parametrize("with_history", [False, True], ids=["zeros", "history"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_hooked_conv1d_is_called_as_a_module_with_the_same_result(padding, with_history,
                                                                   activation):
    """A conv1d with a hook runs as a module (the hook fires, a FLOP counter sees it) and gives
    the op's result: outputs, final history and gradients, float64."""
    torch.manual_seed(0)
    conv = nn.Conv1d(5, 5, 4, groups=5, padding=padding).double()
    x = torch.randn(3, 9, 5, dtype=torch.float64, requires_grad=True)
    hist = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True) if with_history else None
    ref_y, ref_h = causal_conv(conv, x, hist, activation=activation, path="naive")
    ref_grads = torch.autograd.grad((ref_y.square().sum() + ref_h.sum()),
                                    [x, conv.weight, conv.bias] + ([hist] if hist is not None else []))
    calls = []
    handle = conv.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    try:
        y, h = causal_conv(conv, x, hist, activation=activation)
    finally:
        handle.remove()
    assert calls == [(3, 5, 3 + 9)]
    assert_close(y, ref_y, name="y")
    assert_close(h, ref_h, name="history")
    grads = torch.autograd.grad((y.square().sum() + h.sum()),
                                [x, conv.weight, conv.bias] + ([hist] if hist is not None else []))
    for g, r, name in zip(grads, ref_grads, ["x", "weight", "bias", "history"]):
        assert_close(g, r, name=f"grad {name}")


def test_flop_counter_sees_the_layer_convolution():
    """Under torch's FLOP counter (global module hooks) a Mamba layer's convolution is counted:
    2 x (B T C K) forward, as torch's conv1d of the same shape."""
    from torch.utils.flop_counter import FlopCounterMode

    from longssm.layers.mamba import Mamba

    torch.manual_seed(0)
    layer = Mamba(d_model=8, d_state=4, d_conv=4, expand=2)
    x = torch.randn(2, 7, 8)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    convs = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()
             if "convolution" in str(op)}
    assert sum(convs.values()) == 2 * 2 * 7 * 16 * 4, convs
