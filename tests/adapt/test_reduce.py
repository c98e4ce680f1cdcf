"""Token reduction: keep 1 is the identity, order and causality are kept, plans are consistent."""

import pytest
import torch

from longssm.adapt import AdaptError
from longssm.adapt.reduce import (
    REDUCE_METHODS,
    ReduceSpec,
    apply_plan,
    parse_reduce,
    reduce_plan,
    reduced_forward,
    reduced_nll,
)
from longssm.models import ModelConfig, SSMLanguageModel


def model():
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", vocab_size=13, d_model=8, n_layers=3, d_state=4, d_conv=4)
    return SSMLanguageModel(cfg).double().eval()


@pytest.mark.parametrize("method", REDUCE_METHODS)
def test_keep_one_gives_identical_logits(method):
    m = model()
    tokens = torch.randint(0, 13, (2, 20))
    logits, pos = reduced_forward(m, tokens, ReduceSpec(method, 1.0, (0, 1)))
    assert torch.equal(logits, m(tokens)[0])
    assert torch.equal(pos, torch.arange(20).expand(2, 20))


@pytest.mark.parametrize("method", REDUCE_METHODS)
@pytest.mark.parametrize("beyond", [0, 8])
def test_plan_keeps_order_counts_and_merges_forward(method, beyond):
    x = torch.randn(3, 21, 8, dtype=torch.float64)
    spec = ReduceSpec(method, 0.5, (0,), beyond)
    kept, src, dst = reduce_plan(x, spec)
    n = 21 - beyond
    assert kept.shape == (3, beyond + (n + 1) // 2)
    assert (kept[:, 1:] > kept[:, :-1]).all()  # order kept, no duplicates
    assert (kept[:, :beyond] == torch.arange(beyond)).all()  # before beyond untouched
    valid = src >= 0
    assert (dst[valid] > src[valid]).all()  # merges only into later tokens: causal
    for b in range(3):
        kept_set = set(kept[b].tolist())
        assert all(d in kept_set and s not in kept_set
                   for s, d in zip(src[b][valid[b]].tolist(), dst[b][valid[b]].tolist()))
    if method in ("tome", "hybrid"):
        assert valid.any()


def test_apply_plan_averages_merged_tokens():
    x = torch.arange(12, dtype=torch.float64).view(1, 6, 2)
    kept = torch.tensor([[0, 2, 5]])
    out = apply_plan(x, kept, torch.tensor([[1, 3, -1]]), torch.tensor([[2, 5, -1]]))
    expected = torch.stack([x[0, 0], (x[0, 1] + x[0, 2]) / 2, (x[0, 3] + x[0, 5]) / 2])
    assert torch.equal(out[0], expected)


@pytest.mark.parametrize("method", ["random", "hybrid", "tome"])
def test_outputs_at_kept_positions_ignore_the_future(method):
    """Changing the last token changes no kept output before it (given the same kept set)."""
    m = model()
    tokens = torch.randint(0, 13, (2, 24))
    spec = ReduceSpec(method, 0.6, (0, 1), beyond=4)
    logits, pos = reduced_forward(m, tokens, spec)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 13
    logits2, pos2 = reduced_forward(m, changed, spec)
    if torch.equal(pos, pos2):
        early = pos < 23
        assert torch.allclose(logits[early], logits2[early], atol=1e-12, rtol=0)
    assert method != "random" or torch.equal(pos, pos2)
    nll, p = reduced_nll(m, torch.randint(0, 13, (2, 25)), spec)
    assert nll.shape == p.shape and torch.isfinite(nll).all()


def test_bad_specs():
    with pytest.raises(AdaptError, match="unknown reduction"):
        parse_reduce("pumer:0.5")
    with pytest.raises(AdaptError, match="keep ratio"):
        parse_reduce("evit:0")
    with pytest.raises(AdaptError, match="METHOD:KEEP"):
        parse_reduce("evit")
    assert parse_reduce("hybrid:0.5:1,2", beyond=64) == ReduceSpec("hybrid", 0.5, (1, 2), 64)
    with pytest.raises(AdaptError, match="at most half"):
        reduce_plan(torch.randn(1, 10, 4), ReduceSpec("tome", 0.2))


@pytest.mark.parametrize("method", REDUCE_METHODS)
def test_one_chunk_is_the_one_pass(method):
    m = model()
    tokens = torch.randint(0, 13, (2, 21))
    spec = ReduceSpec(method, 0.5, (0, 1), 4)
    one, pos = reduced_nll(m, tokens, spec)
    chunked, cpos = reduced_nll(m, tokens, spec, chunk_size=20)
    assert torch.equal(one, chunked) and torch.equal(pos, cpos)


@pytest.mark.parametrize("method", ["evit", "hybrid", "tome"])
@pytest.mark.parametrize("chunk", [5, 7, 32])
def test_chunks_with_carried_state_equal_one_pass_over_the_reduced_stream(method, chunk):
    """Reference: block 0 over the whole window in one pass; each chunk's part of its output
    reduced by the plan of that part; blocks 1.. over the concatenated reduced stream in one pass
    (no chunks, no carried state). Reduction after block 0 only; positions >= 3 are candidates."""
    m = model()
    tokens = torch.randint(0, 13, (2, 31))
    spec = ReduceSpec(method, 0.5, (0,), 3)
    got, pos = reduced_nll(m, tokens, spec, chunk_size=chunk)
    with torch.no_grad():
        x, _ = m.blocks[0](m.embedding(tokens[:, :-1]))  # (2, 30, D)
        parts, kept_pos = [], []
        for a in range(0, 30, chunk):
            part = x[:, a : a + chunk]
            kept, src, dst = reduce_plan(part, spec, max(0, 3 - a))
            parts.append(apply_plan(part, kept, src, dst))
            kept_pos.append(kept + a)
        y = torch.cat(parts, 1)
        for block in m.blocks[1:]:
            y, _ = block(y)
        logits = m.lm_head(m.norm_f(y))
    want_pos = torch.cat(kept_pos, 1)
    want = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), torch.gather(tokens[:, 1:], 1, want_pos), reduction="none")
    assert torch.equal(pos, want_pos)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the reduction acted in every chunk past position 3
    n_keep = sum(min(3, a + chunk) - a if a < 3 else 0 for a in range(0, 30, chunk))
    n_keep += sum(-(-(min(a + chunk, 30) - max(a, 3)) // 2) for a in range(0, 30, chunk)
                  if min(a + chunk, 30) > max(a, 3))
    assert pos.shape[1] == n_keep < 30


def test_chunks_bound_the_forward_length():
    m = model()
    seen = []
    handle = m.embedding.register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    try:
        reduced_nll(m, torch.randint(0, 13, (1, 101)), ReduceSpec("evit", 0.5, (1,)), chunk_size=16)
    finally:
        handle.remove()
    assert max(seen) == 16 and sum(seen) == 100
