"""LoRA (``lora:R[:ALPHA]``) on Mamba's in_proj / x_proj / out_proj: exact at zero, the merged-weight
reference in float64, only the LoRA tensors train, the count, bad specs."""

import pytest
import torch

from helpers import assert_close
from longssm.adapt import AdaptError, LoRALinear, adapter_tensors, attach, lora_spec
from longssm.models import ModelConfig, SSMLanguageModel


def small_model(mixer="mamba", **kw):
    cfg = ModelConfig(mixer=mixer, vocab_size=11, d_model=8, n_layers=2, d_state=4, **kw)
    return SSMLanguageModel(cfg).double()


def test_zero_lora_gives_bitwise_base_logits_and_steps():
    model = small_model(d_conv=4)
    tokens = torch.randint(0, 11, (3, 13))
    base, base_state = model(tokens)
    attach(model, "lora:3:6")
    adapted, state = model(tokens)
    assert torch.equal(adapted, base)
    assert all(torch.equal(a, b) for s, t in zip(state, base_state) for a, b in zip(s, t))
    assert any(p.abs().sum() > 0 for n, p in adapter_tensors(model).items() if n.endswith("A"))


def test_lora_equals_merged_weight_float64():
    """y = (W + (α/R)·B·A) x + b, written independently by merging the weight."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(7, 5).double()
    lora = LoRALinear(linear, rank=3, alpha=1.5)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    merged = linear.weight + (1.5 / 3) * lora.lora_B @ lora.lora_A
    assert_close(lora(x), x @ merged.T + linear.bias, atol=1e-12, rtol=1e-12)


def test_only_lora_tensors_train_and_the_count():
    model = small_model(d_conv=4)
    params = attach(model, "lora:2")
    mixer = model.blocks[0].mixer
    want = sum(2 * (getattr(mixer, n).in_features + getattr(mixer, n).out_features)
               for n in ("in_proj", "x_proj", "out_proj")) * len(model.blocks)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == want
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == want
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(adapter_tensors(model)) == len(trainable) == 6 * len(model.blocks)
    # gradients reach B (A's gradient is zero while B = 0, as in the paper's init)
    logits, _ = model(torch.randint(0, 11, (2, 9)))
    logits.square().mean().backward()
    assert mixer.in_proj.lora_B.grad.abs().sum() > 0
    assert mixer.in_proj.base.weight.grad is None


@pytest.mark.parametrize("method,message", [
    ("lora:0", "R >= 1"), ("lora:x", "lora:R or lora:R:ALPHA"), ("lora:2:0", "ALPHA > 0"),
    ("lora:2:1:3", "lora:R or lora:R:ALPHA"), ("lora", "unknown adaptation method"),
])
def test_bad_lora_spec(method, message):
    with pytest.raises(AdaptError, match=message):
        attach(small_model(), method)


def test_lora_spec_and_unsupported_layers():
    assert lora_spec("lora:4") == (4, 4.0) and lora_spec("lora:4:16") == (4, 16.0)
    assert lora_spec("state-offset-h") is None
    with pytest.raises(AdaptError, match="LoRA supports Mamba"):
        attach(small_model("s4d"), "lora:2")
    model = small_model()
    attach(model, "lora:2")
    with pytest.raises(AdaptError, match="already carries"):
        attach(model, "lora:2")
