"""The causal depthwise convolution with carried history: pieces == one padded pass == steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_close
from longssm.layers.conv import causal_conv, causal_conv_step


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
