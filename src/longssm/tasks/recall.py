"""Associative recall (MQAR, Arora et al. 2023) and passkey retrieval.

MQAR, length n (a multiple of 3, n ≤ 3·KEYS): k = n/3 pairs ``key value`` with distinct keys, then
the k keys again in a random order; at each query position the label is the value bound to that
key (other positions are unlabelled). Token ids: 0..KEYS-1 keys, KEYS..KEYS+VALUES-1 values.
Score: per query, pooled over a bin (the accuracy of Zoology, Arora et al. 2023, which averages
over query positions); "every query right" is kept as the sequence unit. Unlike Zoology, which
fixes the number of pairs and pads a longer sequence with noise, k grows with n here: a longer
test sequence also holds more pairs than any training sequence.

Passkey, length n ≥ 3: filler tokens, one ``MARK value`` pair at a random position, filler, and a
final ``QUERY`` token whose label is the value. Score: that one prediction.
"""

from __future__ import annotations

import numpy as np

KEYS, VALUES = 64, 16
PASS_VALUES, FILLERS = 16, 8
MARK, QUERY = PASS_VALUES + FILLERS, PASS_VALUES + FILLERS + 1
PASS_VOCAB = QUERY + 1


def mqar(batch: int, n: int, rng: np.random.Generator):
    """(inputs (B, n) int64, targets (B, n) int64 in [0, VALUES), mask (B, n) bool)."""
    k = n // 3
    keys = np.argsort(rng.random((batch, KEYS)), axis=1)[:, :k]  # (B, k) distinct
    values = rng.integers(VALUES, size=(batch, k))
    order = np.argsort(rng.random((batch, k)), axis=1)  # (B, k) query order
    rows = np.arange(batch)[:, None]
    inputs = np.empty((batch, n), dtype=np.int64)
    inputs[:, 0 : 2 * k : 2] = keys
    inputs[:, 1 : 2 * k : 2] = KEYS + values
    inputs[:, 2 * k :] = keys[rows, order]
    targets = np.zeros((batch, n), dtype=np.int64)
    targets[:, 2 * k :] = values[rows, order]
    mask = np.zeros((batch, n), dtype=bool)
    mask[:, 2 * k :] = True
    return inputs, targets, mask


def passkey(batch: int, n: int, rng: np.random.Generator):
    """(inputs (B, n) int64, targets (B, n) int64 in [0, PASS_VALUES), mask (B, n) bool)."""
    inputs = PASS_VALUES + rng.integers(FILLERS, size=(batch, n))
    where = rng.integers(n - 2, size=batch)  # MARK position in [0, n-3]
    value = rng.integers(PASS_VALUES, size=batch)
    rows = np.arange(batch)
    inputs[rows, where] = MARK
    inputs[rows, where + 1] = value
    inputs[:, -1] = QUERY
    targets = np.zeros((batch, n), dtype=np.int64)
    targets[:, -1] = value
    mask = np.zeros((batch, n), dtype=bool)
    mask[:, -1] = True
    return inputs, targets, mask
