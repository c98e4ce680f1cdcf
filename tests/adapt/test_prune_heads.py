"""Mamba-2 head pruning: the smaller model equals the unpruned one with the dropped heads' z rows
zeroed (float64), ratio 0 is the identity, the scores match an independent NumPy Taylor-1."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from longssm.adapt import AdaptError, prune_model
from longssm.adapt.prune_heads import head_scores, kept_heads, zero_heads
from longssm.models import ModelConfig, SSMLanguageModel


def mamba2_model(ngroups=1, bias=False, d_conv=4, mlp_ratio=0):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba2", vocab_size=13, d_model=8, n_layers=2, d_state=4,
                      d_conv=d_conv, mlp_ratio=mlp_ratio,
                      mixer_options={"headdim": 2, "ngroups": ngroups, "bias": bias,
                                     "chunk_size": 4})
    model = SSMLanguageModel(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("ngroups,bias,d_conv,mlp", [(1, False, 4, 0), (2, True, 4, 2),
                                                     (4, False, 0, 0)],
                         ids=["g1", "g2-bias-mlp", "g4-noconv"])
def test_pruned_equals_zeroed_heads(ngroups, bias, d_conv, mlp):
    model = mamba2_model(ngroups, bias, d_conv, mlp)
    calib = torch.randint(0, 13, (4, 10))
    tokens = torch.randint(0, 13, (3, 17))
    keep = kept_heads(head_scores(model, calib), 0.5, ngroups)
    small, info = prune_model(copy.deepcopy(model), "heads", 0.5, calib)
    assert info["heads"] == [8, 4] and info["d_inner"] == [16, 8]
    assert [k.tolist() for k in keep] == info["kept_heads"]
    assert small.cfg.d_inner == 8 and small.num_parameters() < model.num_parameters()
    # every group keeps the same number of heads
    for k in keep:
        assert np.bincount(k.numpy() // (8 // ngroups), minlength=ngroups).tolist() == \
            [4 // ngroups] * ngroups
    zeroed = copy.deepcopy(model)
    zero_heads(zeroed, keep)
    ref, ref_state = zeroed(tokens)
    got, state = small(tokens)
    assert_close(got, ref, name="logits")
    for s, r, k in zip(state, ref_state, keep):
        assert s.ssm.shape == (3, 4, 2, 4) and r.ssm.shape == (3, 8, 2, 4)
        assert_close(s.ssm, r.ssm[:, k], name="kept heads' states")
    # the step form of the smaller model agrees too
    step_state, outs = small.initial_state(3), []
    for t in range(tokens.shape[1]):
        logits, step_state = small.step(tokens[:, t], step_state)
        outs.append(logits)
    assert_close(torch.stack(outs, 1), ref, name="step logits")
    # the dropped heads mattered: the unpruned model differs
    assert (model(tokens)[0] - got).abs().max() > 1e-6


def test_without_the_norm_rescaling_it_differs():
    """The sqrt(n/n′) weight and n/n′ eps are what make it exact (not a test that always passes)."""
    model = mamba2_model()
    calib = torch.randint(0, 13, (2, 9))
    tokens = torch.randint(0, 13, (2, 11))
    small, info = prune_model(copy.deepcopy(model), "heads", 0.5, calib)
    zeroed = copy.deepcopy(model)
    zero_heads(zeroed, [torch.tensor(k) for k in info["kept_heads"]])
    plain = copy.deepcopy(small)
    with torch.no_grad():
        for block in plain.blocks:
            block.mixer.norm.weight.div_(2 ** 0.5)
            block.mixer.norm.eps = model.blocks[0].mixer.norm.eps
    assert (plain(tokens)[0] - zeroed(tokens)[0]).abs().max() > 1e-4


def test_ratio_zero_is_identity():
    model = mamba2_model(ngroups=2)
    tokens = torch.randint(0, 13, (2, 11))
    pruned, info = prune_model(copy.deepcopy(model), "heads", 0.0, torch.randint(0, 13, (2, 9)))
    assert info["heads"] == [8, 8]
    assert torch.equal(pruned(tokens)[0], model(tokens)[0])
    assert pruned.num_parameters() == model.num_parameters()


def test_scores_match_numpy_taylor1():
    """Independent: the mean calibration gradient by finite sums of per-window autograd, then
    mean |W ⊙ g| over each head's z, x, dt rows of in_proj and out_proj columns in NumPy."""
    model = mamba2_model()
    calib = torch.randint(0, 13, (3, 9))
    layer = model.blocks[1].mixer
    W_in, W_out = layer.in_proj.weight, layer.out_proj.weight
    g_in, g_out = np.zeros(W_in.shape), np.zeros(W_out.shape)
    for row in calib:
        model.zero_grad()
        with torch.enable_grad():
            logits, _ = model(row[None, :-1])
            F.cross_entropy(logits[0], row[1:]).backward()
        g_in += W_in.grad.numpy() / len(calib)
        g_out += W_out.grad.numpy() / len(calib)
    model.zero_grad()
    T_in, T_out = np.abs(W_in.detach().numpy() * g_in), np.abs(W_out.detach().numpy() * g_out)
    P, Di, conv = layer.headdim, layer.d_inner, layer.conv_dim
    want = []
    for h in range(layer.nheads):
        c = np.arange(h * P, (h + 1) * P)
        entries = np.concatenate([T_in[c].ravel(), T_in[Di + c].ravel(),
                                  T_in[Di + conv + h].ravel(), T_out[:, c].ravel()])
        want.append(entries.mean())
    got = head_scores(model, calib)[1].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10)
    order = np.sort(np.argsort(-np.array(want), kind="stable")[:6])
    assert kept_heads([torch.as_tensor(got)], 0.25, 1)[0].tolist() == order.tolist()


def test_heads_needs_mamba2_and_calibration():
    mamba = SSMLanguageModel(ModelConfig(mixer="mamba", vocab_size=13, d_model=8, n_layers=1,
                                         d_state=4))
    with pytest.raises(AdaptError, match="mamba2 models only"):
        prune_model(mamba, "heads", 0.5, torch.randint(0, 13, (2, 9)))
    with pytest.raises(AdaptError, match="needs calibration"):
        prune_model(mamba2_model(), "heads", 0.5)
    with pytest.raises(AdaptError, match="must lie in"):
        prune_model(mamba2_model(), "heads", 1.0, torch.randint(0, 13, (2, 9)))


def test_d_inner_option_is_validated():
    with pytest.raises(ValueError, match="headdim"):
        SSMLanguageModel(ModelConfig(mixer="mamba2", vocab_size=13, d_model=8, n_layers=1,
                                     d_state=4, mixer_options={"headdim": 4, "d_inner": 6}))
