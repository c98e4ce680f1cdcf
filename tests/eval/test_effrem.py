"""Effective Remembrance: against a direct computation, and its limits."""

import pytest
import torch

from longssm.eval.effrem import default_drops, effective_remembrance
from longssm.eval.errors import EvalError


def test_default_drops():
    assert default_drops(64) == [1, 2, 4, 8, 16, 32, 63]
    assert default_drops(5) == [1, 2, 4]
    assert default_drops(1) == []


def test_matches_direct_total_variation(conv_model, tokens):
    T, drops = 30, [0, 1, 5, 29]
    out = effective_remembrance(conv_model, tokens, T, drops, n_sequences=3, batch_size=2,
                                chunk_size=7, start=11, progress=False)
    assert out["t"] == drops and out["n_sequences"] == 3
    with torch.no_grad():
        for k, t in enumerate(drops):
            tvs = []
            for i in range(3):
                x = tokens[11 + i * T : 11 + (i + 1) * T]
                p = torch.softmax(conv_model(x[None])[0][0, -1], -1)
                q = torch.softmax(conv_model(x[None, t:])[0][0, -1], -1)
                tvs.append(0.5 * (p - q).abs().sum().item())
            assert out["effrem"][k] == pytest.approx(sum(tvs) / 3, abs=1e-12)
    assert out["effrem"][0] == 0.0
    assert all(0.0 <= v <= 1.0 for v in out["effrem"])
    # dropping everything but the last token changes the prediction
    assert out["effrem"][-1] > 1e-4


def test_bad_input(conv_model, tokens):
    with pytest.raises(EvalError, match="0 <= t < T"):
        effective_remembrance(conv_model, tokens, 16, [16], progress=False)
    with pytest.raises(EvalError, match="too short"):
        effective_remembrance(conv_model, tokens[:10], 16, progress=False)
