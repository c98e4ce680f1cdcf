"""The benchmarks' FLOP count (``benchmarks/family_step.py``): the numerator of the matmul-floor
ratio. Convolution backward with groups counted as twice the forward (torch 2.13's formula
ignores groups), and a Mamba LM's count equal to its projections' matmul FLOPs."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from longssm.models import ModelConfig, SSMLanguageModel

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "family_step.py")
_spec = importlib.util.spec_from_file_location("family_step", _PATH)
family_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(family_step)


def _counts(fn) -> dict[str, int]:
    with FlopCounterMode(display=False, custom_mapping=family_step.flop_formulas()) as counter:
        fn().sum().backward()
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("groups, c_in, c_out", [(1, 8, 6), (2, 8, 6), (12, 12, 12)])
@pytest.mark.parametrize("transposed", [False, True])
def test_conv_backward_is_twice_the_forward(groups, c_in, c_out, transposed):
    x = torch.randn(3, c_in, 20, requires_grad=True)
    if transposed:
        w = torch.randn(c_in, c_out // groups, 4, requires_grad=True)
        counts = _counts(lambda: F.conv_transpose1d(x, w, groups=groups))
        forward = 2 * x.numel() * math.prod(w.shape[1:])
    else:
        w = torch.randn(c_out, c_in // groups, 4, requires_grad=True)
        counts = _counts(lambda: F.conv1d(x, w, groups=groups, padding=3))
        forward = 2 * 3 * c_out * 23 * math.prod(w.shape[1:])  # outputs x MACs per output
    assert counts["aten.convolution"] == forward
    assert counts["aten.convolution_backward"] == 2 * forward


def test_conv_backward_without_weight_gradient():
    x = torch.randn(2, 4, 10, requires_grad=True)
    w = torch.randn(4, 1, 3)  # no gradient wanted: only ∂L/∂x is computed
    counts = _counts(lambda: F.conv1d(x, w, groups=4))
    assert counts["aten.convolution_backward"] == counts["aten.convolution"]


def test_mamba_lm_count_is_its_projections_and_convolutions():
    """The model's FLOPs whatever kernels run: every projection and (since session 10, when our
    fused convolution steps aside for the counter's hooks) every depthwise convolution, forward
    and both gradients."""
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", d_model=16, n_layers=2, vocab_size=257, d_state=4)
    model = SSMLanguageModel(cfg)
    tokens = torch.randint(0, 257, (3, 9))
    flops = family_step.count_step_flops(lambda inputs: model(inputs)[0], tokens)
    rows = 3 * 8
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    expected = sum(3 * 2 * rows * m.in_features * m.out_features for m in linears)
    expected += sum(3 * 2 * rows * m.out_channels * m.kernel_size[0] for m in convs)
    assert linears and convs and flops == expected


@pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch's LSTM runs oneDNN's layer op here"
)
def test_lstm_layer_counts_its_input_and_recurrent_matmuls():
    """torch's LSTM on the CPU (``aten.mkldnn_rnn_layer``): 2 x steps x batch x (4H x I + 4H x H)
    forward, twice that backward (torch 2.13 has no formula for it and counted 0)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(16, 24, batch_first=True)
    x = torch.randn(3, 7, 16, requires_grad=True)
    counts = _counts(lambda: lstm(x)[0])
    forward = 2 * 3 * 7 * (4 * 24 * 16 + 4 * 24 * 24)
    assert counts == {"aten.mkldnn_rnn_layer": forward, "aten.mkldnn_rnn_layer_backward": 2 * forward}
