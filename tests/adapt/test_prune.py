"""Pruning: WANDA against a NumPy argsort, d_state pruning against zeroed rows, ratio 0, errors."""

import copy

import numpy as np
import pytest
import torch

from helpers import assert_close
from longssm.adapt import AdaptError, prune_model
from longssm.adapt.prune import (
    bc_rows,
    dstate_scores,
    input_norms,
    kept_states,
    prunable_linears,
    zero_states,
)
from longssm.models import ModelConfig, SSMLanguageModel


def mamba_model(d_conv=4, d_state=8, mlp_ratio=0):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", vocab_size=13, d_model=8, n_layers=2, d_state=d_state,
                      d_conv=d_conv, mlp_ratio=mlp_ratio)
    model = SSMLanguageModel(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def numpy_wanda_mask(W, X, ratio):
    """Independent WANDA: S = |W| * ||X_j||_2 over all calibration tokens; drop the lowest
    floor(ratio * cols) per row (NumPy argsort)."""
    norms = np.sqrt((X.reshape(-1, X.shape[-1]) ** 2).sum(0))
    S = np.abs(W) * norms[None, :]
    k = int(ratio * W.shape[1])
    keep = np.ones_like(W, dtype=bool)
    order = np.argsort(S, axis=1, kind="stable")[:, :k]
    np.put_along_axis(keep, order, False, axis=1)
    return keep


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7])
def test_wanda_matches_numpy_argsort(ratio):
    model = mamba_model(mlp_ratio=2)
    calib = torch.randint(0, 13, (5, 9))
    # record each linear's inputs independently of the library's hooks
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: inputs.setdefault(n, []).append(
        a[0].detach().numpy())) for n, m in prunable_linears(model).items()]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    weights = {n: m.weight.detach().numpy().copy() for n, m in prunable_linears(model).items()}
    pruned, info = prune_model(model, "wanda", ratio, calib)
    assert len(weights) == 12  # 2 x (in_proj, x_proj, dt_proj, out_proj, mlp.up, mlp.down)
    for name, module in prunable_linears(pruned).items():
        keep = numpy_wanda_mask(weights[name], np.concatenate(inputs[name]), ratio)
        expected = np.where(keep, weights[name], 0.0)
        np.testing.assert_array_equal(module.weight.detach().numpy(), expected, err_msg=name)
        assert ((module.weight == 0).sum(1) >= int(ratio * keep.shape[1])).all()
    assert info["weights_zeroed"] == sum(int(ratio * w.shape[1]) * w.shape[0] for w in weights.values())


def test_input_norms_see_every_token():
    model = mamba_model()
    calib = torch.randint(0, 13, (3, 6))
    norms = input_norms(model, calib, batch_size=2)
    emb = model.embedding.weight.detach()
    x = model.blocks[0].norm(emb[calib])
    assert_close(norms["blocks.0.mixer.in_proj"], x.reshape(-1, 8).square().sum(0).sqrt())


def test_magnitude_drops_smallest_per_matrix():
    model = mamba_model()
    W = model.blocks[0].mixer.in_proj.weight.detach().clone()
    prune_model(model, "magnitude", 0.5)
    got = model.blocks[0].mixer.in_proj.weight.detach()
    threshold = np.sort(np.abs(W.numpy()).ravel())[W.numel() // 2]
    np.testing.assert_array_equal(got.numpy(), np.where(np.abs(W.numpy()) >= threshold, W, 0))


@pytest.mark.parametrize("method", ["dstate-magnitude", "dstate-taylor1", "dstate-taylor2"])
@pytest.mark.parametrize("d_conv", [0, 4])
def test_dstate_pruning_equals_zeroed_rows_with_smaller_state(method, d_conv):
    model = mamba_model(d_conv=d_conv)
    calib = torch.randint(0, 13, (4, 10))
    tokens = torch.randint(0, 13, (3, 17))
    scores = dstate_scores(model, method, calib)
    keep = kept_states(scores, 0.375)
    small, info = prune_model(copy.deepcopy(model), method, 0.375, calib)
    assert info["d_state"] == [8, 5] and small.cfg.d_state == 5
    assert [k.tolist() for k in keep] == info["kept_states"]
    assert small.num_parameters() < model.num_parameters()
    zeroed = copy.deepcopy(model)
    zero_states(zeroed, keep)
    b, c = bc_rows(zeroed.blocks[0].mixer)
    assert (zeroed.blocks[0].mixer.x_proj.weight[b] == 0).all(1).sum() == 3
    ref, ref_state = zeroed(tokens)
    got, state = small(tokens)
    assert_close(got, ref, name="logits")
    assert state[0].ssm.shape == (3, 16, 5) and ref_state[0].ssm.shape == (3, 16, 8)
    for s, r, k in zip(state, ref_state, keep):
        assert_close(s.ssm, r.ssm[..., k], name="kept states")
    # the states it dropped mattered somewhere: the unpruned model differs
    assert (model(tokens)[0] - got).abs().max() > 1e-6


def test_dstate_magnitude_scores_are_bc_row_norms():
    model = mamba_model()
    layer = model.blocks[1].mixer
    b, c = bc_rows(layer)
    W = layer.x_proj.weight.detach()
    expected = W[b].abs().mean(1) + W[c].abs().mean(1)
    assert_close(dstate_scores(model, "dstate-magnitude")[1], expected)
    order = torch.argsort(expected, descending=True)[:6].sort().values
    assert kept_states([expected], 0.25)[0].tolist() == order.tolist()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "dstate-magnitude", "dstate-taylor1",
                                    "dstate-taylor2"])
def test_ratio_zero_is_identity(method):
    model = mamba_model()
    tokens = torch.randint(0, 13, (2, 11))
    base, _ = model(tokens)
    pruned, _ = prune_model(copy.deepcopy(model), method, 0.0, torch.randint(0, 13, (2, 9)))
    assert torch.equal(pruned(tokens)[0], base)
    assert pruned.num_parameters() == model.num_parameters()


@pytest.mark.parametrize("method,ratio,message", [
    ("magnitude", 1.0, "must lie in"), ("wanda", -0.1, "must lie in"),
    ("bogus", 0.5, "unknown pruning method"), ("wanda", 0.5, "needs calibration")])
def test_bad_input(method, ratio, message):
    with pytest.raises(AdaptError, match=message):
        prune_model(mamba_model(), method, ratio)


def test_dstate_needs_mamba():
    model = SSMLanguageModel(ModelConfig(mixer="s4d", vocab_size=13, d_model=8, n_layers=1,
                                         d_state=4))
    with pytest.raises(AdaptError, match="mamba models only"):
        prune_model(model, "dstate-magnitude", 0.5)


def numpy_taylor_scores(model, calib, order):
    """Independent Taylor scores: per-window gradients from plain ``.backward()`` on a copy, then
    NumPy: g = mean g_i, F = mean g_i²; element importance |W g| (order 1) or |−g W + ½ F W²|
    (order 2); state n scored by the mean over its B row plus the mean over its C row."""
    grads = []
    for row in calib:
        m = copy.deepcopy(model)
        logits, _ = m(row[None, :-1])
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), row[None, 1:]).backward()
        grads.append([b.mixer.x_proj.weight.grad.numpy() for b in m.blocks])
    scores = []
    for i, block in enumerate(model.blocks):
        W = block.mixer.x_proj.weight.detach().numpy()
        G = np.stack([g[i] for g in grads])  # (windows, rows, cols)
        g, F = G.mean(0), (G ** 2).mean(0)
        E = np.abs(W * g) if order == 1 else np.abs(-g * W + 0.5 * F * W ** 2)
        R, N = block.mixer.dt_rank, block.mixer.d_state
        scores.append(E[R:R + N].mean(1) + E[R + N:R + 2 * N].mean(1))
    return scores


@pytest.mark.parametrize("order", [1, 2])
def test_taylor_scores_match_numpy(order):
    model = mamba_model()
    calib = torch.randint(0, 13, (3, 10))
    got = dstate_scores(model, f"dstate-taylor{order}", calib)
    want = numpy_taylor_scores(model, calib, order)
    for g, w in zip(got, want):
        assert_close(g, torch.from_numpy(w), name=f"taylor{order} scores")
    if order == 2:  # the second-order term matters: taylor2 differs from taylor1
        t1 = dstate_scores(model, "dstate-taylor1", calib)
        assert any((a - b).abs().max() > 1e-8 for a, b in zip(got, t1))
