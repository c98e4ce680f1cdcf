"""Window layout: budgets, contiguity, and the shuffled donors never being adjacent."""

import numpy as np
import pytest

from longssm.eval.errors import EvalError
from longssm.eval.windows import MIN_SHUFFLED_ROWS, plan_windows, shuffled_donors


def scored_targets(plan) -> np.ndarray:
    """Stream positions of every scored target of the plan, sorted."""
    out = []
    for r in range(plan.rows):
        for j in range(plan.windows_per_row):
            s = plan.window_start(r, j)
            out.append(np.arange(s + 1, s + plan.length + 1))
    return np.sort(np.concatenate(out))


@pytest.mark.parametrize("protocol", ["reset", "stream", "shuffled"])
def test_every_length_scores_the_same_targets(protocol):
    start, budget = 1024, 1024
    for L in (1, 4, 16, 64, 256, 1024):
        plan = plan_windows(100_000, L, protocol, budget, 8, start)
        assert plan.n_scored == budget, L
        # each target scored once, and the same contiguous block for every L
        np.testing.assert_array_equal(scored_targets(plan), np.arange(start + 1, start + budget + 1))


def test_budget_remainder_and_long_lengths():
    plan = plan_windows(100_000, 100, "reset", 1000, 3, 0)
    assert (plan.rows, plan.windows_per_row, plan.n_scored) == (3, 3, 900)
    # one window longer than the budget is still scored
    plan = plan_windows(100_000, 4096, "reset", 1000, 8, 0)
    assert (plan.rows, plan.windows_per_row, plan.n_scored) == (1, 1, 4096)


def test_short_stream_shrinks_then_fails():
    plan = plan_windows(1000, 64, "stream", 1 << 20, 4, 64)
    assert plan.end_token <= 1000 and plan.n_windows == (1000 - 1 - 64) // 64 // 4 * 4
    with pytest.raises(EvalError, match="too short"):
        plan_windows(100, 128, "reset", 1024, 4, 0)


def test_bad_input():
    with pytest.raises(EvalError, match="unknown protocol"):
        plan_windows(1000, 16, "carry", 64, 4, 16)
    with pytest.raises(EvalError, match="warm-up"):
        plan_windows(1000, 16, "stream", 64, 4, 0)
    with pytest.raises(EvalError, match="positive"):
        plan_windows(1000, 0, "reset", 64, 4, 0)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("L", [16, 256, 4096])
def test_shuffled_plan_has_rows_to_shuffle_and_fits(batch_size, L):
    plan = plan_windows(1 << 16, L, "shuffled", 4096, batch_size, 4096)
    assert plan.total_rows >= MIN_SHUFFLED_ROWS
    assert plan.end_token <= 1 << 16
    assert sorted(plan.donor_of_row) == list(range(plan.total_rows))


@pytest.mark.parametrize("n_rows", [4, 5, 8, 16])
@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_shuffled_donor_is_never_adjacent(n_rows, k):
    perm = shuffled_donors(n_rows, k, seed=n_rows * k)
    assert sorted(perm) == list(range(n_rows))
    for r, p in enumerate(perm):
        for j in range(k):
            target, donor = r * k + j, p * k + j - 1
            assert abs(donor - target) >= 2, (r, p, j)


def test_shuffled_donors_are_seeded():
    assert shuffled_donors(16, 4, seed=3) == shuffled_donors(16, 4, seed=3)
    assert shuffled_donors(16, 4, seed=3) != shuffled_donors(16, 4, seed=4)
    with pytest.raises(EvalError):
        shuffled_donors(2, 1)
