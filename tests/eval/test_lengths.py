"""``evaluate_lengths``: chunking changes nothing; each protocol equals an explicit reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longssm.eval.errors import EvalError
from longssm.eval.lengths import evaluate_lengths, make_plans
from longssm.models.state import select_rows

LENGTHS = [1, 8, 37]
BUDGET = 150


def run(model, tokens, protocol, chunk_size, **kw):
    kw = {"n_tokens": BUDGET, "batch_size": 4, "progress": False, **kw}
    return evaluate_lengths(model, tokens, LENGTHS, protocol, chunk_size=chunk_size, **kw)


@pytest.mark.parametrize("protocol", ["reset", "stream", "shuffled"])
def test_chunk_size_does_not_change_losses(model, tokens, protocol):
    reference = run(model, tokens, protocol, chunk_size=4096)
    # chunk 1 (every token a call) is the slowest; one protocol suffices for that extreme
    for chunk_size in (1, 13) if protocol == "shuffled" else (5,):
        for got, ref in zip(run(model, tokens, protocol, chunk_size), reference):
            assert got["length"] == ref["length"] and got["n_tokens"] == ref["n_tokens"]
            assert abs(got["loss"] - ref["loss"]) < 1e-9, (chunk_size, got, ref)


def window_loss(model, x, state=None):
    """Summed next-token loss of (B, L+1) windows in one forward pass, and the final state."""
    logits, state = model(x[:, :-1], state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
    return loss.item(), state


def windows(tokens, plan, j):
    return torch.stack([tokens[s : s + plan.length + 1] for s in plan.row_starts(j).tolist()])


def reference_loss(model, tokens, plan) -> float:
    """Each protocol written out with whole windows and the rows the plan names."""
    total, state = 0.0, None
    rounds = range(-1 if plan.warmup else 0, plan.windows_per_row)
    for j in rounds:
        x = windows(tokens, plan, j)
        if plan.protocol == "reset":
            state = None
        elif state is not None:
            state = select_rows(state, torch.tensor(plan.donor_of_row))
        logits, state = model(x[:, :-1], state)
        if j >= 0:
            scored = logits[: plan.rows]
            total += F.cross_entropy(
                scored.reshape(-1, scored.shape[-1]), x[: plan.rows, 1:].reshape(-1), reduction="sum"
            ).item()
    return total / plan.n_scored


@pytest.mark.parametrize("protocol", ["reset", "stream", "shuffled"])
def test_protocols_match_reference(model, tokens, protocol):
    records = run(model, tokens, protocol, chunk_size=16)
    plans = make_plans(tokens, LENGTHS, [protocol], BUDGET, 4)
    with torch.no_grad():
        for record, plan in zip(records, plans):
            assert abs(record["loss"] - reference_loss(model, tokens, plan)) < 1e-9


def test_stream_equals_one_pass_over_each_row(conv_model, tokens):
    """Stream scoring = one forward over warm-up + all windows of a row (the state carry is exact)."""
    model = conv_model
    L = 32
    (record,) = evaluate_lengths(model, tokens, [L], "stream", n_tokens=256, batch_size=2,
                                 chunk_size=5, progress=False)
    (plan,) = make_plans(tokens, [L], ["stream"], 256, 2)
    total = 0.0
    with torch.no_grad():
        for r in range(plan.rows):
            a = plan.window_start(r, -1)
            b = plan.window_start(r, plan.windows_per_row - 1) + L + 1
            logits, _ = model(tokens[a : b - 1][None])
            nll = F.cross_entropy(logits[0], tokens[a + 1 : b], reduction="none")
            total += nll[L:].sum().item()
    assert abs(record["loss"] - total / plan.n_scored) < 1e-9


def test_carried_state_changes_losses(conv_model, tokens):
    model = conv_model
    by = {p: run(model, tokens, p, 64)[1]["loss"] for p in ("reset", "stream", "shuffled")}
    assert abs(by["reset"] - by["stream"]) > 1e-6
    assert abs(by["stream"] - by["shuffled"]) > 1e-6


def test_record_fields_and_derived_metrics(conv_model, tokens):
    model = conv_model
    records = run(model, tokens, "all", 64, bytes_per_token=1.5)
    assert [r["protocol"] for r in records] == ["reset"] * 3 + ["stream"] * 3 + ["shuffled"] * 3
    for r in records:
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
        assert r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2) / 1.5)
        # the budget, less fewer than `rows` dropped windows
        assert BUDGET - 4 * r["length"] < r["n_tokens"] <= max(BUDGET, r["length"])


def test_numpy_memmap_input_matches_tensor(conv_model, tokens, tmp_path):
    model = conv_model
    path = tmp_path / "tokens.npy"
    np.save(path, tokens.numpy().astype(np.uint16))
    mapped = np.load(path, mmap_mode="r")
    a = run(model, tokens, "stream", 16)
    b = run(model, mapped, "stream", 16)
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-12)


def test_forward_never_sees_more_than_a_chunk(conv_model, tokens):
    model = conv_model
    widths = []
    original = model.forward

    def spy(x, state=None):
        widths.append(x.shape[1])
        return original(x, state)

    model.forward = spy
    # two rows of one window each plus the warm-up round, batched: 2 rounds of 512 tokens
    evaluate_lengths(model, tokens, [512], "stream", n_tokens=1024, batch_size=2, chunk_size=64,
                     progress=False)
    assert max(widths) == 64 and sum(widths) == 2 * 512


def test_training_mode_is_restored(conv_model, tokens):
    model = conv_model
    model.train()
    run(model, tokens, "reset", 64)
    assert model.training


def test_bad_arguments(conv_model, tokens):
    model = conv_model
    with pytest.raises(EvalError, match="protocol"):
        run(model, tokens, "carry", 64)
    with pytest.raises(EvalError, match="lengths"):
        evaluate_lengths(model, tokens, [0, 16], progress=False)
    with pytest.raises(EvalError, match="1-D"):
        evaluate_lengths(model, tokens.view(2, -1), [16], progress=False)
    with pytest.raises(EvalError, match="too short"):
        evaluate_lengths(model, tokens[:50], [64], progress=False)
