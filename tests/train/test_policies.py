"""State-initialisation policies: what each segment starts from."""

import pytest
import torch

from longssm.models import ModelConfig, SSMLanguageModel
from longssm.train.policies import make_policy


def tiny_model(**kw):
    cfg = dict(mixer="mamba", d_model=16, n_layers=2, d_state=4, expand=2, d_conv=4, vocab_size=32)
    cfg.update(kw)
    return SSMLanguageModel(ModelConfig(**cfg)).double()


def run_segment(model, init, batch=4, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.vocab_size, (batch, length), generator=g)
    _, final = model(tokens, init)
    return final


def no_resets(b=4):
    return torch.zeros(b, dtype=torch.bool)


def test_zero_policy_gives_zeros():
    model = tiny_model()
    policy = make_policy("zero", model)
    final = run_segment(model, None)
    init = policy.initial_state(final, no_resets(), 4)
    for layer in init:
        for t in layer:
            assert torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("spec", ["previous", "bptt:3", "p-reset:0.0"])
def test_previous_carries_final_state_of_same_row(spec):
    model = tiny_model()
    policy = make_policy(spec, model)
    final = run_segment(model, None)
    init = policy.initial_state(final, no_resets(), 4)
    for got_layer, want_layer in zip(init, final):
        for got, want in zip(got_layer, want_layer):
            assert torch.equal(got, want)
    # rows flagged for reset start from zero, the others keep their own state
    resets = torch.tensor([True, False, True, False])
    init = policy.initial_state(final, resets, 4)
    for got_layer, want_layer in zip(init, final):
        for got, want in zip(got_layer, want_layer):
            assert torch.equal(got[resets], torch.zeros_like(got[resets]))
            assert torch.equal(got[~resets], want[~resets])


def test_p_reset_one_always_resets():
    model = tiny_model()
    policy = make_policy("p-reset:1.0", model)
    final = run_segment(model, None)
    init = policy.initial_state(final, no_resets(), 4)
    assert all(torch.equal(t, torch.zeros_like(t)) for layer in init for t in layer)


def test_passing_takes_another_rows_state():
    model = tiny_model()
    policy = make_policy("passing", model)
    final = run_segment(model, None)
    init = policy.initial_state(final, no_resets(), 4)
    ssm_in, ssm_out = init[0].ssm, final[0].ssm
    for row in range(4):
        matches = [j for j in range(4) if torch.equal(ssm_in[row], ssm_out[j])]
        assert matches and row not in matches


def test_passing_needs_two_rows():
    model = tiny_model()
    policy = make_policy("passing", model)
    final = run_segment(model, None, batch=1)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        policy.initial_state(final, no_resets(1), 1)


def test_noise_policy_distribution():
    model = tiny_model()
    policy = make_policy("noise", model, noise_std=0.5)
    init = policy.initial_state(None, no_resets(4000), 4000)
    ssm = init[0].ssm
    assert abs(ssm.mean().item()) < 0.01
    assert abs(ssm.std().item() - 0.5) < 0.01
    # the convolution buffer holds past inputs, not SSM state: it stays zero
    assert torch.equal(init[0].conv, torch.zeros_like(init[0].conv))


def test_fitted_noise_matches_observed_statistics():
    model = tiny_model()
    policy = make_policy("fitted-noise", model)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in policy.initial_state(None, no_resets(), 4)[0])
    template = model.initial_state(2048)
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(template[0].ssm.shape[1:], generator=g, dtype=torch.float64)
    std = torch.rand(template[0].ssm.shape[1:], generator=g, dtype=torch.float64) + 0.5
    for _ in range(150):
        sample = mean + std * torch.randn(template[0].ssm.shape, generator=g, dtype=torch.float64)
        observed = tuple(type(layer)(sample, layer.conv) for layer in template)
        policy.observe(observed)
    init = policy.initial_state(None, no_resets(20000), 20000)[0].ssm
    assert torch.allclose(init.mean(0), mean, atol=0.06)
    assert torch.allclose(init.std(0), std, atol=0.06)


def test_learned_policy_is_trainable_and_shared():
    model = tiny_model()
    policy = make_policy("learned", model)
    params = policy.parameters()
    assert params and all(p.requires_grad for p in params)
    init = policy.initial_state(None, no_resets(), 4)
    logits, _ = model(torch.randint(0, 32, (4, 5)), init)
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert torch.equal(init[0].ssm[0], init[0].ssm[3])


def test_policy_state_round_trip():
    model = tiny_model()
    policy = make_policy("fitted-noise", model, seed=3)
    policy.observe(run_segment(model, None))
    tensors = policy.state_tensors()
    other = make_policy("fitted-noise", model, seed=99)
    other.load_state_tensors(tensors)
    a = policy.initial_state(None, no_resets(), 4)
    b = other.initial_state(None, no_resets(), 4)
    assert torch.equal(a[0].ssm, b[0].ssm)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        make_policy("sometimes", tiny_model())
