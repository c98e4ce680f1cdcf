"""The synthetic Markov source: exact entropy rate against samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longssm.data import DataError, MarkovChain


def _conditional_entropy(x: np.ndarray, order: int, vocab: int) -> float:
    """Plug-in estimate of H(x_t | x_{t-k} .. x_{t-1}) in nats."""
    ctx = np.zeros(len(x) - order, dtype=np.int64)
    for i in range(order):
        ctx = ctx * vocab + x[i : len(x) - order + i]
    joint = np.bincount(ctx * vocab + x[order:], minlength=vocab ** (order + 1)).astype(float)
    joint = joint.reshape(-1, vocab)
    p_ctx = joint.sum(1, keepdims=True)
    p = joint / np.maximum(p_ctx, 1)
    h_rows = -(p * np.log(np.where(p > 0, p, 1))).sum(1)
    return float((p_ctx[:, 0] / p_ctx.sum()) @ h_rows)


def test_iid_entropy_is_unigram_entropy():
    chain = MarkovChain(order=0, vocab_size=10, seed=3)
    p = chain.probs[0]
    assert chain.entropy_rate() == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    assert chain.entropy_rate() < math.log(10)


def test_stationary_is_invariant():
    chain = MarkovChain(order=2, vocab_size=3, seed=1)
    pi, n, v = chain.stationary, chain.num_contexts, chain.vocab_size
    moved = np.zeros(n)
    for s in range(n):
        for x in range(v):
            moved[(s * v + x) % n] += pi[s] * chain.probs[s, x]
    np.testing.assert_allclose(moved, pi, atol=1e-12)
    assert pi.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("order, vocab", [(0, 5), (1, 6), (2, 4)])
def test_empirical_entropy_matches_rate(order, vocab):
    chain = MarkovChain(order=order, vocab_size=vocab, seed=7)
    x = chain.sample(100_000, seed=0)
    assert x.min() >= 0 and x.max() < vocab
    assert _conditional_entropy(x, order, vocab) == pytest.approx(chain.entropy_rate(), abs=0.02)
    if order:
        ctx = np.zeros(len(x) - order + 1, dtype=np.int64)
        for i in range(order):
            ctx = ctx * vocab + x[i : len(x) - order + 1 + i]
        freq = np.bincount(ctx, minlength=vocab**order) / len(ctx)
        np.testing.assert_allclose(freq, chain.stationary, atol=0.01)


def test_entropy_differs_between_seeds_and_orders():
    # Guards against a test that passes because every chain is uniform.
    rates = {MarkovChain(k, 8, s).entropy_rate() for k in (1, 2) for s in (0, 1)}
    assert len(rates) == 4 and max(rates) < math.log(8) - 0.1


def test_sample_is_deterministic():
    chain = MarkovChain(order=1, vocab_size=5, seed=0)
    np.testing.assert_array_equal(chain.sample(1000, seed=4), chain.sample(1000, seed=4))
    assert not np.array_equal(chain.sample(1000, seed=4), chain.sample(1000, seed=5))
    assert chain.sample(1, seed=0).shape == (1,)
    assert MarkovChain(order=3, vocab_size=2, seed=0).sample(2).shape == (2,)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(order=-1, vocab_size=4),
        dict(order=1, vocab_size=1),
        dict(order=1, vocab_size=4, alpha=0),
        dict(order=8, vocab_size=16),
    ],
    ids=["order", "vocab", "alpha", "too-big"],
)
def test_bad_chain(kwargs):
    with pytest.raises(DataError):
        MarkovChain(**kwargs)
    with pytest.raises(DataError):
        MarkovChain(1, 4).sample(0)
