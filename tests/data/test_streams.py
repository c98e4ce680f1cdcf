"""Contiguous streams: contiguity, shifted targets, exact resume, evaluation windows."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest
import torch

from longssm.data import (
    ContiguousStreams,
    DataError,
    load_corpus,
)

N = 1003


@pytest.fixture
def tokens():
    return np.arange(N, dtype=np.uint16) % 251


@pytest.mark.parametrize("b, t", [(1, 1), (3, 7), (4, 16), (5, 199)])
def test_rows_are_contiguous_streams(tokens, b, t):
    loader = ContiguousStreams(tokens, batch_size=b, seq_len=t)
    L = loader.stream_len
    assert L == N // b and loader.num_steps_per_epoch == (L - 1) // t
    prev = None
    for k, batch in enumerate(islice(loader, loader.num_steps_per_epoch)):
        assert batch.inputs.shape == batch.targets.shape == (b, t)
        assert batch.inputs.dtype == torch.long
        assert batch.step == k and batch.epoch == 0
        for row in range(b):
            expected = tokens[row * L + k * t : row * L + k * t + t + 1].astype(np.int64)
            assert batch.inputs[row].tolist() == expected[:-1].tolist()
            assert batch.targets[row].tolist() == expected[1:].tolist()
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        if prev is not None:
            # Row b continues exactly where it stopped: no token skipped, none repeated.
            assert torch.equal(batch.inputs[:, 0], prev.targets[:, -1])
        assert batch.resets.tolist() == [k == 0] * b
        prev = batch
    assert loader.epoch == 1 and loader.step_in_epoch == 0


def test_epochs_wrap(tokens):
    loader = ContiguousStreams(tokens, batch_size=2, seq_len=10)
    n = loader.num_steps_per_epoch
    batches = list(islice(loader, 2 * n + 1))
    assert [b.epoch for b in batches] == [0] * n + [1] * n + [2]
    assert torch.equal(batches[0].inputs, batches[n].inputs)
    assert batches[n].resets.all() and not batches[n - 1].resets.any()


def test_epoch_offsets(tokens):
    t = 8
    loader = ContiguousStreams(tokens, batch_size=3, seq_len=t, offset_seed=0)
    offsets = [loader.epoch_offset(e) for e in range(20)]
    assert all(0 <= o < t for o in offsets) and len(set(offsets)) > 1
    assert loader.stream_len == (N - (t - 1)) // 3
    for e in (0, 5):
        first = loader.batch_at(e, 0)
        o = offsets[e]
        assert first.inputs[:, 0].tolist() == [
            int(tokens[o + r * loader.stream_len]) for r in range(3)
        ]
        last = loader.batch_at(e, loader.num_steps_per_epoch - 1)
        assert int(last.targets.max()) < 251
    assert ContiguousStreams(tokens, 3, t).epoch_offset(4) == 0


@pytest.mark.parametrize("offset_seed", [None, 3])
def test_resume_is_exact(tokens, offset_seed):
    loader = ContiguousStreams(tokens, batch_size=3, seq_len=9, offset_seed=offset_seed)
    n_before = loader.num_steps_per_epoch + 4
    list(islice(loader, n_before))
    state = json.loads(json.dumps(loader.state_dict()))
    expected = list(islice(loader, loader.num_steps_per_epoch + 2))
    fresh = ContiguousStreams(tokens, batch_size=3, seq_len=9, offset_seed=offset_seed)
    fresh.load_state_dict(state)
    got = list(islice(fresh, len(expected)))
    for a, b in zip(expected, got):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.resets, b.resets) and (a.epoch, a.step) == (b.epoch, b.step)


def test_resume_rejects_other_settings(tokens):
    state = ContiguousStreams(tokens, batch_size=3, seq_len=9).state_dict()
    with pytest.raises(DataError, match="batch_size"):
        ContiguousStreams(tokens, batch_size=2, seq_len=9).load_state_dict(state)
    with pytest.raises(DataError, match="num_tokens"):
        ContiguousStreams(tokens[:-1], batch_size=3, seq_len=9).load_state_dict(state)


def test_doc_start_mask(tokens):
    starts = np.array([0, 5, 37, 400, 999])
    loader = ContiguousStreams(tokens, batch_size=2, seq_len=10, doc_starts=starts)
    seen = []
    for batch in islice(loader, loader.num_steps_per_epoch):
        for row in range(2):
            for t in torch.nonzero(batch.doc_start_mask[row]).flatten().tolist():
                seen.append(row * loader.stream_len + batch.step * 10 + t)
    covered = [s for s in starts if (s % loader.stream_len) < loader.num_steps_per_epoch * 10]
    assert sorted(seen) == covered


def test_accepts_token_corpus_and_tensor(tmp_path, tokens):
    f = tmp_path / "a.txt"
    f.write_text("hello world. " * 100)
    corpus = load_corpus(str(f), cache_dir=tmp_path / "cache")
    batch = next(ContiguousStreams(corpus, batch_size=2, seq_len=8))
    assert batch.doc_start_mask[0, 0] and batch.inputs[0, 0] == 256
    from_tensor = next(ContiguousStreams(torch.from_numpy(tokens.astype(np.int64)), 2, 8))
    assert torch.equal(from_tensor.inputs, next(ContiguousStreams(tokens, 2, 8)).inputs)


@pytest.mark.parametrize("b, t", [(0, 4), (2, 0), (-1, 4), (2, -3)])
def test_bad_sizes(tokens, b, t):
    with pytest.raises(DataError, match="positive"):
        ContiguousStreams(tokens, batch_size=b, seq_len=t)


def test_corpus_too_short(tokens):
    with pytest.raises(DataError, match=r"1003 tokens.*100 streams.*seq_len\+1 = 11.*needs 1100"):
        ContiguousStreams(tokens, batch_size=100, seq_len=10)
    # Exactly enough: one step.
    assert ContiguousStreams(tokens[:22], batch_size=2, seq_len=10).num_steps_per_epoch == 1
