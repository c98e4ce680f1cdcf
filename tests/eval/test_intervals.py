"""Block-bootstrap intervals against a bootstrap written independently with plain loops."""

import math

import numpy as np
import pytest

from longssm.eval.intervals import (
    add_intervals,
    block_grid,
    block_of,
    bootstrap_indices,
    percentile_interval,
    replicates,
)

# a fixed array: 8 blocks of text, losses summed per block, varying token counts
BLOCK_NLL = np.array([130.0, 95.5, 210.25, 80.0, 150.0, 99.0, 170.5, 60.0])
BLOCK_TOKENS = np.array([64, 64, 64, 40, 64, 64, 64, 30])


def reference_bootstrap(nll, tokens, n_resamples, seed, confidence=0.95):
    """Plain-loop ratio bootstrap; percentiles by sorting and linear interpolation."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(nll), size=(n_resamples, len(nll)))
    means = []
    for row in draws:
        total_nll = 0.0
        total_tokens = 0
        for b in row:
            total_nll += nll[b]
            total_tokens += tokens[b]
        means.append(total_nll / total_tokens)
    means = sorted(means)

    def pct(q):
        pos = q / 100 * (len(means) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return means[lo] + (means[hi] - means[lo]) * (pos - lo)

    tail = (1 - confidence) / 2 * 100
    return pct(tail), pct(100 - tail)


@pytest.mark.parametrize("n_resamples, seed", [(500, 0), (2000, 7)])
def test_interval_equals_the_reference_bootstrap(n_resamples, seed):
    reps = replicates(BLOCK_NLL, BLOCK_TOKENS, bootstrap_indices(len(BLOCK_NLL), n_resamples, seed))
    low, high = percentile_interval(reps)
    ref_low, ref_high = reference_bootstrap(BLOCK_NLL, BLOCK_TOKENS, n_resamples, seed)
    assert low == pytest.approx(ref_low, rel=1e-12) and high == pytest.approx(ref_high, rel=1e-12)
    point = BLOCK_NLL.sum() / BLOCK_TOKENS.sum()
    assert low < point < high


def test_coverage_on_independent_blocks():
    # iid block means with known mean 2.0: the 95% interval covers it about 95% of the time
    rng = np.random.default_rng(1)
    covered = 0
    trials = 400
    for t in range(trials):
        nll = rng.normal(2.0, 0.2, 32) * 100
        low, high = percentile_interval(
            replicates(nll, np.full(32, 100), bootstrap_indices(32, 1000, t))
        )
        covered += low <= 2.0 <= high
    assert 0.88 <= covered / trials <= 0.99


def test_width_matches_the_standard_error_of_block_means():
    rng = np.random.default_rng(2)
    nll = rng.normal(3.0, 0.1, 64) * 50
    low, high = percentile_interval(replicates(nll, np.full(64, 50), bootstrap_indices(64, 4000, 0)))
    se = (nll / 50).std(ddof=1) / math.sqrt(64)
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.12)


def test_block_grid_and_positions():
    first, size, n = block_grid(start=100, n_tokens=1000, n_blocks=32)
    assert (first, size, n) == (101, 32, 32)
    positions = np.array([101, 132, 133, 101 + 999, 5000])
    assert block_of(positions, (first, size, n)).tolist() == [0, 0, 1, 31, 31]
    assert block_grid(0, 5, 32) == (1, 1, 5)


def test_add_intervals_pairs_consecutive_lengths():
    records = []
    for i, L in enumerate([16, 32, 64]):
        nll = BLOCK_NLL + 10.0 * i
        records.append({"protocol": "reset", "length": L, "loss": nll.sum() / BLOCK_TOKENS.sum(),
                        "block_nll": nll.tolist(), "block_tokens": BLOCK_TOKENS.tolist()})
    add_intervals(records, n_resamples=500)
    assert records[0]["delta_prev"] is None
    idx = bootstrap_indices(8, 500, 0)
    for a, b in ((0, 1), (1, 2)):
        diff = replicates(records[b]["block_nll"], BLOCK_TOKENS, idx) - replicates(
            records[a]["block_nll"], BLOCK_TOKENS, idx
        )
        low, high = percentile_interval(diff)
        assert records[b]["delta_prev_low"] == pytest.approx(low)
        assert records[b]["delta_prev_high"] == pytest.approx(high)
        assert records[b]["delta_prev"] == pytest.approx(records[b]["loss"] - records[a]["loss"])
        # the same text at both lengths: the paired interval is far narrower than either loss's
        assert high - low < (records[b]["loss_high"] - records[b]["loss_low"]) / 2


def test_non_finite_loss_gives_a_non_finite_interval():
    records = [{"protocol": "reset", "length": 16, "loss": math.inf,
                "block_nll": [math.inf] * 4, "block_tokens": [1] * 4}]
    add_intervals(records, n_resamples=50)
    assert records[0]["loss_low"] == math.inf and records[0]["loss_high"] == math.inf
