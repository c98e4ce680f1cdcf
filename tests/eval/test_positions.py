"""Per-position curves: bins, agreement with ``evaluate_lengths``, state norms at powers of two."""

import pytest

from longssm.eval.errors import EvalError
from longssm.eval.lengths import evaluate_lengths
from longssm.eval.positions import log_bin_edges, position_curve


def test_log_bin_edges():
    assert log_bin_edges(64) == [1, 2, 4, 8, 16, 32, 64, 65]
    assert log_bin_edges(100) == [1, 2, 4, 8, 16, 32, 64, 101]
    assert log_bin_edges(1) == [1, 2]
    fine = log_bin_edges(64, bins_per_octave=2)
    assert fine[:6] == [1, 2, 3, 4, 6, 8] and fine[-1] == 65
    with pytest.raises(EvalError):
        log_bin_edges(64, 0)


@pytest.mark.parametrize("protocol", ["reset", "stream"])
def test_binned_curve_averages_to_the_length_loss(conv_model, tokens, protocol):
    L, kw = 48, {"n_tokens": 192, "batch_size": 2, "chunk_size": 20, "progress": False, "start": 48}
    curve = position_curve(conv_model, tokens, L, protocol, **kw)
    (record,) = evaluate_lengths(conv_model, tokens, [L], protocol, **kw)
    weighted = sum(loss * n for loss, n in zip(curve["loss"], curve["count"]))
    assert sum(curve["count"]) == record["n_tokens"]
    assert weighted / record["n_tokens"] == pytest.approx(record["loss"], abs=1e-10)
    assert len(curve["positions"]) == len(curve["bin_edges"]) - 1 == len(curve["loss"])


def test_state_norms_at_powers_of_two_and_chunk_ends(conv_model, tokens):
    curve = position_curve(conv_model, tokens, 40, n_tokens=80, batch_size=2, chunk_size=16,
                           progress=False)
    assert curve["state_positions"] == [1, 2, 4, 8, 16, 32, 40]
    norms = curve["state_norms"]
    assert len(norms) == 7 and all(len(row) == 2 for row in norms)
    # a zero-initialised state grows from nothing
    assert all(v > 0 for row in norms for v in row)
