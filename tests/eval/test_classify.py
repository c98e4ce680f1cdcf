"""The Definition 2.1 classifier on constructed curves with paired bootstrap replicates."""

import math

import numpy as np
import pytest

from longssm.eval.classify import KINDS, classify_extension, classify_records
from longssm.eval.errors import EvalError
from longssm.eval.intervals import add_intervals

# The issue's three curves (nats, lengths 16 .. 8192, training length 16)
LENGTHS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
S5_ZERO = [2.163, 2.218, 2.366, 2.545, 2.768, 2.910, 2.955, 3.000, 3.021, 3.006]
S5_PREVIOUS = [2.3212, 2.2958, 2.2740, 2.2583, 2.2456, 2.2356, 2.2283, 2.2279, 2.2269, 2.2266]
MAMBA_PREVIOUS = [2.000, 1.950, 1.910, 1.880, 1.860, 1.848, 1.840, 1.835, 1.831, 1.829]


def paired_replicates(curve, text_sd=0.3, own_sd=0.002, n_blocks=32, n_resamples=2000, seed=0):
    """Replicates of a curve measured on shared text: block means = curve + shared + own noise.

    ``text_sd`` is how much harder one block of text is than another (shared by every length:
    it cancels in paired differences); ``own_sd`` the length-specific noise of a block mean.
    """
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, text_sd, n_blocks)
    blocks = np.asarray(curve)[:, None] + shared[None, :] + rng.normal(0, own_sd, (len(curve), n_blocks))
    # centre so that the block means average exactly to the curve
    blocks += np.asarray(curve)[:, None] - blocks.mean(axis=1, keepdims=True)
    idx = np.random.default_rng(seed + 1).integers(0, n_blocks, (n_resamples, n_blocks))
    return blocks[:, idx].mean(axis=2)  # (n, R)


@pytest.mark.parametrize(
    "curve, kind",
    [(S5_ZERO, "none"), (S5_PREVIOUS, "strong"), (MAMBA_PREVIOUS, "strong")],
    ids=["s5-zero-rises", "s5-previous-monotone", "mamba-previous-small-steps"],
)
def test_the_issue_curves(curve, kind):
    out = classify_extension(LENGTHS, curve, paired_replicates(curve), min_length=16)
    assert out.kind == kind, out.reason
    assert out.l0 == 16 and out.l_max == 8192


def test_rising_curve_reports_its_evidence():
    out = classify_extension(LENGTHS, S5_ZERO, paired_replicates(S5_ZERO), min_length=16)
    assert out.l_best == 16 and out.worse_than is not None
    assert out.gap == pytest.approx(3.006 - 2.163)
    assert out.gap_low <= out.gap <= out.gap_high and out.gap_low > 0
    assert out.change == pytest.approx(out.gap)
    # the last half (512 .. 8192) still rises: positive slope per doubling
    assert out.slope > 0
    x = np.log2(LENGTHS[5:])
    assert out.slope == pytest.approx(np.polyfit(x, S5_ZERO[5:], 1)[0])


def test_the_last_pair_does_not_decide():
    # the old rule looked only at the last pair (a small final drop): still none
    curve = S5_ZERO[:-1] + [S5_ZERO[-2] - 0.05]
    assert classify_extension(LENGTHS, curve, paired_replicates(curve), min_length=16).kind == "none"


def test_small_steps_but_a_significant_total_decrease_is_strong():
    curve = [2.0 - 0.003 * i for i in range(len(LENGTHS))]  # every step 0.003 nats
    out = classify_extension(LENGTHS, curve, paired_replicates(curve, own_sd=0.002))
    assert out.kind == "strong" and out.change_high < 0


def test_a_flat_noisy_curve_is_weak():
    rng = np.random.default_rng(3)
    kinds = []
    for seed in range(20):
        curve = list(2.0 + rng.normal(0, 0.001, len(LENGTHS)))
        kinds.append(classify_extension(LENGTHS, curve, paired_replicates(curve, own_sd=0.01, seed=seed)).kind)
    # noise only (0.001 nats around a constant, block noise 0.01): weak nearly always
    assert kinds.count("weak") >= 18, kinds


def test_non_finite_anywhere_is_none():
    for bad in (math.nan, math.inf):
        curve = list(S5_PREVIOUS)
        curve[4] = bad
        out = classify_extension(LENGTHS, curve, min_length=16)
        assert out.kind == "none" and "not finite" in out.reason


def test_adding_a_constant_keeps_the_verdict():
    for curve in (S5_ZERO, S5_PREVIOUS, MAMBA_PREVIOUS):
        reps = paired_replicates(curve)
        base = classify_extension(LENGTHS, curve, reps).kind
        for c in (-1.0, 0.5, 3.0):
            shifted = classify_extension(LENGTHS, [v + c for v in curve], reps + c).kind
            assert shifted == base


def test_reversing_a_monotone_curve_flips_strong_to_none():
    reps = paired_replicates(MAMBA_PREVIOUS)
    assert classify_extension(LENGTHS, MAMBA_PREVIOUS, reps).kind == "strong"
    assert classify_extension(LENGTHS, MAMBA_PREVIOUS[::-1], reps[::-1]).kind == "none"


def test_only_lengths_from_the_training_length_count():
    # a curve that rises before T = 256 and falls after it: strong from L0 = 256
    curve = [2.0, 2.1, 2.2, 2.3, 2.4, 2.35, 2.3, 2.25, 2.2, 2.15]
    reps = paired_replicates(curve)
    assert classify_extension(LENGTHS, curve, reps).kind == "none"
    out = classify_extension(LENGTHS, curve, reps, min_length=256)
    assert (out.kind, out.l0, out.n_lengths) == ("strong", 256, 6)


def test_exact_curves_without_replicates():
    assert classify_extension([16, 32, 64], [3.0, 2.9, 2.8]).kind == "strong"
    assert classify_extension([16, 32, 64], [3.0, 3.0, 3.0]).kind == "weak"
    assert classify_extension([16, 32, 64], [3.0, 2.5, 2.6]).kind == "none"


@pytest.mark.parametrize(
    "lengths, losses, kwargs, match",
    [
        ([16], [2.0], {}, "at least 2"),
        ([16, 32], [2.0, 2.1], {"min_length": 64}, r"at least 2 evaluation lengths >= 64"),
        ([16, 32], [2.0], {}, "lengths but"),
        ([16, 32], [2.0, 2.1], {"confidence": 1.0}, "confidence"),
        ([16, 32], [2.0, 2.1], {"replicates": np.zeros((3, 5))}, "replicates"),
    ],
)
def test_bad_input(lengths, losses, kwargs, match):
    with pytest.raises(EvalError, match=match):
        classify_extension(lengths, losses, **kwargs)


def test_classify_records_uses_the_block_data():
    # records as evaluate_lengths writes them: per-block sums; a rise hidden in the noise of an
    # unpaired comparison but visible when paired
    rng = np.random.default_rng(0)
    hard = rng.gamma(2.0, 1.0, 32) * 64  # the text of each block (shared)
    records = []
    for i, L in enumerate([16, 32, 64, 128]):
        nll = hard + 64 * 0.01 * i + rng.normal(0, 0.05, 32)
        records.append({"protocol": "reset", "length": L, "loss": nll.sum() / (64 * 32),
                        "block_nll": nll.tolist(), "block_tokens": [64] * 32})
    add_intervals(records)
    unpaired_overlap = records[0]["loss_high"] > records[-1]["loss_low"]
    assert unpaired_overlap  # the per-length intervals overlap ...
    out = classify_records(records, min_length=16)
    assert out.kind == "none" and out.gap_low > 0  # ... but the paired rise is significant
    assert out.kind in KINDS
