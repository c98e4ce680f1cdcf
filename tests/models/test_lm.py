"""The language model: state protocol invariants for every mixer, bad input, generation, tags."""

import pytest
import torch

from helpers import assert_close, assert_states_close, small_mixer_fields
from longssm.layers.base import is_ssm_param, wants_weight_decay
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.mixers import MIXER_NAMES
from longssm.models.state import flatten_state, unflatten_state

# One case per registered mixer, then variants (no convolution, MLP + LayerNorm, eigenvalue maps).
MIXERS = {name: small_mixer_fields(name) for name in MIXER_NAMES} | {
    "mamba-noconv": dict(mixer="mamba", d_state=4, d_conv=0),
    "mamba-mlp-layernorm": dict(mixer="mamba", d_state=4, mlp_ratio=2, norm="layernorm"),
    "longhorn-noconv": dict(mixer="longhorn", d_state=4, d_conv=0),
    "mamba-best": dict(mixer="mamba", d_state=4, eigen_param="best", eigen_param_b=0.25),
    "s4d-softplus": dict(mixer="s4d", d_state=8, eigen_param="softplus"),
    "s5-direct": dict(mixer="s5", d_state=8, eigen_param="direct"),
}


def make_model(name, **kw):
    cfg = ModelConfig(d_model=16, n_layers=2, vocab_size=40, **MIXERS[name], **kw)
    torch.manual_seed(0)
    return SSMLanguageModel(cfg).double()


@pytest.mark.parametrize("name", list(MIXERS))
def test_split_sequence_with_carried_state_equals_one_pass(name):
    model = make_model(name)
    tokens = torch.randint(0, 40, (3, 37))
    full, final = model(tokens)
    g = torch.Generator().manual_seed(1)
    cuts = sorted(torch.randperm(36, generator=g)[:4].add(1).tolist())
    pieces, state = [], None
    for a, b in zip([0, *cuts], [*cuts, 37]):
        logits, state = model(tokens[:, a:b], state)
        pieces.append(logits)
    assert_close(torch.cat(pieces, 1), full, name="logits")
    assert_states_close(state, final)


@pytest.mark.parametrize("name", list(MIXERS))
def test_prefill_then_steps_equals_full_forward(name):
    model = make_model(name)
    tokens = torch.randint(0, 40, (2, 20))
    full, final = model(tokens)
    logits, state = model(tokens[:, :11])
    outs = [logits]
    for t in range(11, 20):
        step_logits, state = model.step(tokens[:, t], state)
        outs.append(step_logits.unsqueeze(1))
    assert_close(torch.cat(outs, 1), full, name="logits")
    assert_states_close(state, final)


@pytest.mark.parametrize("name", ["mamba", "s4d"])
def test_state_flatten_round_trip(name):
    model = make_model(name)
    _, state = model(torch.randint(0, 40, (2, 9)))
    back = unflatten_state(flatten_state(state), model.initial_state(2))
    assert_states_close(back, state)


def test_bad_inputs_are_explained():
    model = make_model("mamba")
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.randint(0, 40, (5,)))
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        model(torch.tensor([[1, 2, 40]]))
    with pytest.raises(ValueError, match="tuple of 2 layer states"):
        model(torch.randint(0, 40, (2, 5)), model.initial_state(2)[:1])
    bad = model.initial_state(3)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randint(0, 40, (2, 5)), bad)


def test_generate_is_reproducible_and_continues_the_state():
    model = make_model("mamba")
    prompt = torch.randint(0, 40, (2, 6))
    a, state_a = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b, _ = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 8)
    greedy, state = model.generate(prompt, 5, temperature=0)
    # the returned state covers prompt + generated tokens
    _, reference = model(torch.cat([prompt, greedy], 1))
    assert_states_close(state, reference)
    logits, _ = model(prompt)
    assert torch.equal(greedy[:, 0], logits[:, -1].argmax(-1))
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 2, top_k=0)


@pytest.mark.parametrize("name", list(MIXERS))
def test_ssm_parameters_are_tagged(name):
    if MIXERS[name]["mixer"] in ("gru", "lstm", "block-attention"):
        pytest.skip("GRU / LSTM / block attention have no SSM dynamics parameters to tag")
    model = make_model(name)
    ssm = [n for n, p in model.named_parameters() if is_ssm_param(p)]
    assert ssm, "every mixer tags its dynamics parameters"
    assert all(not wants_weight_decay(p) for p in model.parameters() if is_ssm_param(p))
    assert wants_weight_decay(model.embedding.weight)
    assert not wants_weight_decay(model.norm_f.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("fields", [dict(mlp_ratio=0), dict(mlp_ratio=2)], ids=["plain", "mlp"])
def test_residual_adds_inside_the_norms_keep_every_bit(fields, dtype):
    """The LM hands each block's output to the next norm (``Block.forward_pending`` and the fused
    ``add_rms_norm``); with a forward hook on every block, each block runs as a module with its
    own adds. Logits and every parameter gradient equal bit for bit, and the hooks fire."""
    cfg = ModelConfig(mixer="mamba", d_model=24, n_layers=3, vocab_size=30, d_state=4, **fields)
    torch.manual_seed(0)
    model = SSMLanguageModel(cfg).to(dtype)
    tokens = torch.randint(0, 30, (2, 19))

    def run():
        model.zero_grad()
        logits, _ = model(tokens)
        logits.square().mean().backward()
        return [logits.detach()] + [p.grad.clone() for p in model.parameters()]

    fused = run()
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append(o[0].shape)) for b in model.blocks]
    try:
        per_block = run()
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 3
    assert all(torch.equal(a, b) for a, b in zip(fused, per_block))
