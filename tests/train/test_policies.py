"""State-initialisation policies: what each segment starts from."""

import pytest
import torch

from longssm.config import POLICY_GRAMMAR, parse_policy
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.state import select_rows
from longssm.policies import POLICY_CLASSES, StatePolicy, make_policy
from longssm.train.distributed import ShardedPolicy


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


@pytest.mark.parametrize("spec", ["noise", "fitted-noise", "learned"])
def test_block_position_is_bookkeeping_not_state(spec):
    # a BST's state holds the position inside the current block (``pos``), shared by all rows:
    # the policies that invent a state leave it at zero and the model accepts their states
    model = tiny_model(mixer="bst", mixer_options={"block_size": 4})
    policy = make_policy(spec, model)
    final = run_segment(model, None, length=6)  # ends inside a block: pos = 2
    assert all(float(layer.pos[0]) == 2 for layer in final)
    policy.observe(final)
    init = policy.initial_state(final, no_resets(), 4)
    assert all(torch.equal(layer.pos, torch.zeros_like(layer.pos)) for layer in init)
    assert any(layer.ctx.abs().sum() > 0 for layer in init) or spec == "learned"
    run_segment(model, init)


def test_fitted_noise_matches_observed_statistics():
    model = tiny_model()
    policy = make_policy("fitted-noise", model)
    assert all(
        torch.equal(t, torch.zeros_like(t)) for t in policy.initial_state(None, no_resets(), 4)[0]
    )
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


@pytest.mark.parametrize("spec", ["sometimes", "bptt", "bptt:0", "zero:1", "p-reset:1.5", ""])
def test_unknown_policy_is_rejected_with_one_line_listing_the_valid_ones(spec):
    with pytest.raises(ValueError, match="policy must be one of") as info:
        make_policy(spec, tiny_model())
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in POLICY_GRAMMAR)


SPECS = ["zero", "previous", "bptt:2", "passing", "noise", "fitted-noise", "learned", "p-reset:0.5"]


def test_every_grammar_name_has_a_class_declaring_it():
    assert sorted(POLICY_CLASSES) == sorted(POLICY_GRAMMAR)
    assert sorted(parse_policy(s)[0] for s in SPECS) == sorted(POLICY_GRAMMAR)
    for spec in SPECS:
        policy = make_policy(spec, tiny_model())
        assert isinstance(policy, POLICY_CLASSES[parse_policy(spec)[0]])
        assert policy.spec == spec


def same_state(a, b):
    return all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))


@pytest.mark.parametrize("spec", SPECS)
def test_flags_tell_the_truth(spec):
    """row_local: any subset of rows gets those rows of the whole batch's states; reads_carry=False:
    the carried state does not matter; observes: the class has its own ``observe``."""
    model = tiny_model()
    final = run_segment(model, None)
    resets = torch.tensor([True, False, False, True])
    rows = torch.tensor([1, 3])
    whole, part = make_policy(spec, model, seed=5), make_policy(spec, model, seed=5)
    for p in (whole, part):
        p.observe(final)
    if whole.row_local:
        assert same_state(
            select_rows(whole.initial_state(final, resets, 4), rows),
            part.initial_state(select_rows(final, rows), resets[rows], 2),
        )
    if not whole.reads_carry:
        assert same_state(
            whole.initial_state(final, resets, 4), part.initial_state(None, resets, 4)
        )
    assert whole.observes == (type(whole).observe is not StatePolicy.observe)


class TwoRankView:
    """The ``DistContext`` of rank 1 of 2 whose gathers return the given whole-batch tensors."""

    rank, world_size = 1, 2

    def __init__(self, full_state, full_resets):
        self.full_state, self.full_resets = full_state, full_resets

    def owned_streams(self, batch_size):
        return list(range(self.rank, batch_size, self.world_size))

    def gather_rows(self, t):
        return self.full_resets

    def gather_state(self, state):
        return self.full_state


@pytest.mark.parametrize("spec", SPECS)
def test_sharded_policy_gives_the_ranks_rows_of_the_single_process_policy(spec):
    model = tiny_model()
    final = run_segment(model, None)
    resets = torch.tensor([False, True, False, False])
    rows = torch.tensor([1, 3])
    single = make_policy(spec, model, seed=2)
    sharded = ShardedPolicy(make_policy(spec, model, seed=2), TwoRankView(final, resets), 4)
    for _ in range(3):
        single.observe(final)
        sharded.observe(select_rows(final, rows))
        want = select_rows(single.initial_state(final, resets, 4), rows)
        assert same_state(sharded.initial_state(select_rows(final, rows), resets[rows], 2), want)
