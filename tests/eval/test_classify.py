"""The Definition 2.1 classifier on constructed loss(L) curves."""

import math

import numpy as np
import pytest

from longssm.eval.classify import classify_extension
from longssm.eval.errors import EvalError

LENGTHS = [2**i for i in range(4, 16)]  # 16 .. 32768


def curve(fn):
    return [fn(i) for i in range(len(LENGTHS))]


def test_monotone_decreasing_is_strong():
    out = classify_extension(LENGTHS, curve(lambda i: 3.0 - 0.1 * i), tol=0.01)
    assert (out.kind, out.l0, out.gap) == ("strong", 16, 0.0)


def test_flat_after_a_drop_is_weak():
    out = classify_extension(LENGTHS, curve(lambda i: max(2.0, 3.0 - 0.2 * i)), tol=0.01)
    assert out.kind == "weak" and out.l0 == 16
    assert out.l0_strong is None


def test_decreasing_only_beyond_the_training_length():
    # worse at first, then decreasing from L = 256 on: strong with L0 = 256
    losses = curve(lambda i: 2.0 + 0.1 * i if i < 4 else 2.4 - 0.05 * (i - 4))
    out = classify_extension(LENGTHS, losses, tol=0.01)
    assert (out.kind, out.l0, out.l0_weak) == ("strong", 256, 256)


def test_blowing_up_is_none():
    losses = curve(lambda i: 2.0 + 0.01 * math.exp(i))
    out = classify_extension(LENGTHS, losses, tol=0.01)
    assert out.kind == "none" and out.l0 is None
    assert out.gap == pytest.approx(losses[-1] - losses[0])


def test_non_finite_tail_is_none():
    losses = curve(lambda i: 2.0)[:-2] + [math.inf, math.inf]
    out = classify_extension(LENGTHS, losses, tol=0.01)
    assert out.kind == "none" and out.gap == math.inf


def test_noise_within_tolerance_is_weak_and_beyond_it_is_none():
    noise = np.random.default_rng(0).uniform(-1, 1, len(LENGTHS))
    within = [2.0 + 0.004 * e for e in noise]
    assert classify_extension(LENGTHS, within, tol=0.01).kind == "weak"
    assert classify_extension(LENGTHS, within, tol=0.01).l0 == 16
    rising_tail = within[:-1] + [within[-2] + 0.05]
    assert classify_extension(LENGTHS, rising_tail, tol=0.01).kind == "none"


def test_noisy_decrease_is_strong_only_when_steps_exceed_tolerance():
    noise = np.random.default_rng(1).uniform(-1, 1, len(LENGTHS))
    losses = [3.0 - 0.05 * i + 0.01 * e for i, e in enumerate(noise)]
    assert classify_extension(LENGTHS, losses, tol=0.02).kind == "strong"
    assert classify_extension(LENGTHS, losses, tol=0.06).kind == "weak"


def test_min_pairs_and_min_length():
    # only the last step decreases: strong with one pair, weak-or-none when two are required
    losses = curve(lambda i: 2.0 + 0.1 * i if i < len(LENGTHS) - 1 else 0.0)
    assert classify_extension(LENGTHS, losses, tol=0.01).l0 == LENGTHS[-2]
    assert classify_extension(LENGTHS, losses, tol=0.01, min_pairs=2).kind == "none"
    out = classify_extension(LENGTHS, curve(lambda i: 3.0 - 0.1 * i), min_length=1024)
    assert out.l0 == 1024


def test_order_independent_and_bad_input():
    losses = curve(lambda i: 3.0 - 0.1 * i)
    assert classify_extension(LENGTHS[::-1], losses[::-1]) == classify_extension(LENGTHS, losses)
    with pytest.raises(EvalError):
        classify_extension([16], [1.0])
    with pytest.raises(EvalError):
        classify_extension([16, 32], [1.0])
    with pytest.raises(EvalError):
        classify_extension([16, 32], [1.0, 1.0], tol=-1)
