"""Prefix tuning (``prefix:K``) and full fine-tuning (``full``).

Prefix reference: the base mixer run over the concatenation [P_l; x] with its K prefix outputs
dropped; full: every parameter trains and the adapter is the whole weights file."""

import pytest
import torch

from helpers import assert_close, small_mixer_fields
from longssm.adapt import AdaptError, adapter_tensors, apply_adapter, attach
from longssm.models import ModelConfig, SSMLanguageModel


def small_model(mixer):
    fields = {**small_mixer_fields(mixer), "d_model": 16}
    return SSMLanguageModel(ModelConfig(vocab_size=11, n_layers=2, **fields)).double()


@pytest.mark.parametrize("mixer", ["mamba", "mamba2", "s4d", "lru", "gru"])
def test_prefix_equals_the_mixer_over_prefix_then_tokens(mixer):
    model = small_model(mixer)
    bases = [block.mixer for block in model.blocks]
    params = attach(model, "prefix:3")
    assert [tuple(p.shape) for p in params] == [(3, 16)] * 2
    with torch.no_grad():
        for p in params:
            p.normal_()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for base, block in zip(bases, model.blocks):
        P = block.mixer.prefix.detach().expand(2, -1, -1)
        y_ref, s_ref = base(torch.cat([P, x], 1))
        y, s = block.mixer(x)
        assert_close(y, y_ref[:, 3:], name=f"{mixer} y")
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(s, s_ref))
        # step from None starts from the prefix's state too
        y0, _ = block.mixer.step(x[:, 0], None)
        assert_close(y0, y[:, 0], name=f"{mixer} step")
        # an explicit state wins over the prefix
        zeros = base.initial_state(2, dtype=torch.float64)
        assert_close(block.mixer(x, zeros)[0], base(x, zeros)[0], name="explicit state")


def test_prefix_trains_only_the_prefix_and_changes_the_output():
    model = small_model("mamba")
    tokens = torch.randint(0, 11, (2, 9))
    base, _ = model(tokens)
    params = attach(model, "prefix:2")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "blocks.0.mixer.prefix", "blocks.1.mixer.prefix"}
    assert set(adapter_tensors(model)) == {"blocks.0.prefix", "blocks.1.prefix"}
    logits, _ = model(tokens)
    assert (logits - base).abs().max() > 0  # even a zero prefix leaves a state (conv bias ...)
    logits.square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in params)


def test_full_trains_everything_and_round_trips():
    model = small_model("mamba2")
    params = attach(model, "full")
    assert len(params) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    tensors = {k: v.detach().clone() for k, v in adapter_tensors(model).items()}
    assert all(k.startswith("model.") for k in tensors)
    tokens = torch.randint(0, 11, (2, 9))
    want, _ = model(tokens)
    fresh = small_model("mamba2")
    assert not torch.equal(fresh(tokens)[0], want)
    apply_adapter(fresh, "full", tensors)
    assert torch.equal(fresh(tokens)[0], want)
    assert not any(p.requires_grad for p in fresh.parameters())
    with pytest.raises(AdaptError, match="already carries"):
        attach(fresh, "state-offset-h")


def test_full_adapter_of_another_shape_is_refused():
    model = small_model("mamba")
    attach(model, "full")
    tensors = {k: v.detach() for k, v in adapter_tensors(model).items()}
    other = SSMLanguageModel(ModelConfig(vocab_size=11, n_layers=2, mixer="mamba", d_model=16,
                                         d_state=8, d_conv=4)).double()
    with pytest.raises(AdaptError, match="has shape"):
        apply_adapter(other, "full", tensors)
