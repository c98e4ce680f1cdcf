"""Layer operators: ``M x + skip x + offset`` equals the layer's own computation (float64 models,
non-zero carried state): the scan output (scan view) and the input of the output projection
(block view: gate, activations and the short convolution folded in)."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, small_mixer_fields
from longssm.analysis import hidden_attention, layer_operators, state_reliance
from longssm.analysis.attention import attention_rollout, attribution
from longssm.models import ModelConfig, SSMLanguageModel

F64 = torch.float64
MIXERS = ["mamba", "mamba-noconv", "longhorn", "mamba2", "s4d", "s5", "lru"]


def make_model(name: str, n_layers: int = 2):
    fields = small_mixer_fields("mamba" if name == "mamba-noconv" else name)
    if name == "mamba-noconv":
        fields["d_conv"] = 0
    torch.manual_seed(0)
    model = SSMLanguageModel(ModelConfig(d_model=16, n_layers=n_layers, vocab_size=11, **fields))
    return model.to(F64).eval()


def carried_state(model, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    warm = torch.randint(0, 11, (2, T), generator=g)
    with torch.no_grad():
        _, state = model(warm)
    return state


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("kind", ["scan", "block"])
def test_operator_reproduces_layer(name, kind):
    model = make_model(name)
    state = carried_state(model)
    tokens = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(2))
    ops = layer_operators(model, tokens, state, kind)
    for k, op in ops.items():
        assert op.state.abs().max() > 1e-6, "the carried state must matter in this test"
        assert_close(op.apply(), op.output, atol=1e-10, rtol=0, name=f"{name} {kind} layer {k}")


def test_block_output_is_the_layers_own():
    """The block view's output is captured from the layer's forward, so the identity above is a
    statement about the layer, not about a recomputation."""
    model = make_model("mamba")
    tokens = torch.randint(0, 11, (1, 8))
    ops = layer_operators(model, tokens, None, "block", layers=[0])
    mixer = model.blocks[0].mixer
    u = ops[0].x  # x̂ = in_proj x-part; recompute the layer directly
    seen = {}
    h = mixer.out_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("m", a[0]))
    with torch.no_grad():
        model(tokens)
    h.remove()
    assert_close(ops[0].output, seen["m"], name="out_proj input")
    assert u.shape[-1] == mixer.d_inner


def test_hidden_attention_positions_match_full():
    model = make_model("mamba")
    tokens = torch.randint(0, 11, (1, 12))
    full = hidden_attention(model, tokens, 1, kind="block", channels=[3])
    part = hidden_attention(model, tokens, -1, kind="block", positions=[2, 11], channels=[3])
    assert_close(part["mean"], full["mean"][:, [2, 11]], name="mean rows")
    assert_close(part["channels"][3], full["channels"][3][:, [2, 11]], name="channel rows")
    assert (full["mean"][0].triu(1) == 0).all()  # causal
    with pytest.raises(ValueError, match="layer"):
        hidden_attention(model, tokens, 2)


def test_state_reliance_is_zero_without_state_and_positive_with():
    model = make_model("s5")
    tokens = torch.randint(0, 11, (2, 10))
    zero = state_reliance(model, tokens, None)
    assert zero["ratio"].shape == (2, 2, 10) and float(zero["ratio"].abs().max()) == 0.0
    carried = state_reliance(model, tokens, carried_state(model), positions=[0, 9])
    assert carried["ratio"].shape == (2, 2, 2) and float(carried["ratio"].min()) > 0


def test_rollout_and_attribution_rows_are_distributions():
    model = make_model("mamba")
    tokens = torch.randint(0, 11, (2, 7))
    roll = attention_rollout(model, tokens)
    assert_close(roll["rollout"].sum(-1), torch.ones(2, 7, dtype=F64), name="rollout rows")
    attr = attribution(model, tokens)
    assert len(attr["layers"]) == 2 and float(attr["layers"][0].sum()) > 0
    assert_close(attr["rollout"].sum(-1), torch.ones(2, 7, dtype=F64), name="attr rows")
    assert all(p.grad is None for p in model.parameters())
