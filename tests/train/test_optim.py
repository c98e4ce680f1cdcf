"""Optimiser groups from parameter tags, and the learning-rate schedule."""

import math

import pytest
import torch
from torch import nn

from longssm.layers.base import tag_no_weight_decay, tag_ssm_param
from longssm.train.optim import adamw, lr_at, param_groups, set_lr


class Tagged(nn.Module):
    """A weight matrix, a bias, a tagged norm weight, SSM parameters (one decayed), tied weights."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)  # weight (3, 4) decays; bias (3,) is 1-D: no decay
        self.norm = tag_no_weight_decay(nn.Parameter(torch.ones(4, 4)))
        self.A_log = tag_ssm_param(nn.Parameter(torch.zeros(4, 2)))
        self.dt_bias = tag_ssm_param(nn.Parameter(torch.zeros(4)), weight_decay=True)
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)


def names(model, group, extra=()):
    by_id = {id(p): n for n, p in model.named_parameters()}
    by_id.update({id(p): f"extra{i}" for i, p in enumerate(extra)})
    return sorted(by_id[id(p)] for p in group["params"])


def test_tags_choose_the_groups_and_tied_weights_appear_once():
    model = Tagged()
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay", "ssm"]
    decay, no_decay, ssm = groups
    assert names(model, decay) == ["embed.weight", "proj.weight"]
    assert names(model, no_decay) == ["norm", "proj.bias"]
    # an SSM parameter is in the ssm group whatever its decay tag; that group never decays
    assert names(model, ssm) == ["A_log", "dt_bias"]
    assert (decay["weight_decay"], no_decay["weight_decay"], ssm["weight_decay"]) == (0.1, 0.0, 0.0)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == 6
    assert all(p.requires_grad for p in all_params)
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_extra_parameters_follow_the_same_rules_once():
    model = Tagged()
    extra = [
        nn.Parameter(torch.zeros(3, 3)),
        nn.Parameter(torch.zeros(2)),
        tag_no_weight_decay(nn.Parameter(torch.zeros(2, 2))),
    ]
    groups = param_groups(model, 1e-3, 0.1, extra=extra + [extra[0], model.proj.weight])
    by_name = {g["name"]: g for g in groups}
    # an untagged matrix decays like a model weight (so does a learned initial state of >= 2-D)
    assert names(model, by_name["decay"], extra) == ["embed.weight", "extra0", "proj.weight"]
    assert names(model, by_name["no_decay"], extra) == ["extra1", "extra2", "norm", "proj.bias"]


def test_ssm_lr_scales_the_ssm_group_and_empty_groups_are_dropped():
    model = Tagged()
    groups = {g["name"]: g for g in param_groups(model, lr=2e-3, weight_decay=0.1, ssm_lr=5e-4)}
    assert groups["ssm"]["lr_scale"] == pytest.approx(0.25)
    assert groups["decay"]["lr_scale"] == groups["no_decay"]["lr_scale"] == 1.0
    plain = nn.Linear(3, 3, bias=False)
    assert [g["name"] for g in param_groups(plain, 1e-3, 0.1, ssm_lr=1e-2)] == ["decay"]


def reference_lr(step, peak, total, warmup, min_ratio):
    """The schedule written out by hand: linear warm-up, then cosine to min_ratio * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio * peak + (peak - min_ratio * peak) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_lr_at_warms_up_then_decays_by_cosine(warmup):
    peak, total, min_ratio = 3e-3, 100, 0.1
    lrs = [lr_at(s, peak, total, warmup, min_ratio) for s in range(total + 5)]
    for s, lr in enumerate(lrs):
        assert lr == pytest.approx(reference_lr(s, peak, total, warmup, min_ratio), rel=1e-12), s
    # warm-up ends at the peak, which is where the cosine starts
    assert lrs[warmup - 1 if warmup else 0] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)
    if warmup:
        assert lrs[0] == pytest.approx(peak / warmup)
        assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))
    # cosine: halfway down at the midpoint, min_ratio * peak at the end and after it
    mid = warmup + (total - warmup) // 2
    if (total - warmup) % 2 == 0:
        assert lrs[mid] == pytest.approx(peak * (min_ratio + (1 - min_ratio) / 2))
    assert lrs[total] == pytest.approx(min_ratio * peak)
    assert lrs[-1] == pytest.approx(min_ratio * peak)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))


def test_set_lr_applies_each_groups_scale():
    model = Tagged()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1, ssm_lr=1e-3))
    set_lr(optimizer, 4e-3)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"decay": 4e-3, "no_decay": 4e-3, "ssm": 4e-4})
    plain = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    set_lr(plain, 0.5)
    assert plain.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adamw_is_fused_for_float_cpu_params_and_matches_the_loop(dtype):
    """The fused AdamW (float32 / float64 on the CPU) follows the per-tensor loop's updates over
    20 steps with two groups (decayed and not) to round-off; other dtypes get the loop."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(17, 5, generator=g, dtype=dtype) for _ in range(3)]
    fused_params = [nn.Parameter(t.clone()) for t in start]
    loop_params = [nn.Parameter(t.clone()) for t in start]

    def groups(params):
        return [
            {"params": params[:2], "weight_decay": 0.1},
            {"params": params[2:], "weight_decay": 0.0},
        ]

    fused = adamw(groups(fused_params), lr=1e-2, betas=(0.9, 0.95))
    loop = torch.optim.AdamW(groups(loop_params), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(20):
        for p, q in zip(fused_params, loop_params):
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q, s in zip(fused_params, loop_params, start):
        assert not torch.equal(p, s)
        torch.testing.assert_close(p, q, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)

    half = adamw([nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lr=1e-3)
    assert not half.defaults.get("fused") and half.defaults["foreach"] is False
