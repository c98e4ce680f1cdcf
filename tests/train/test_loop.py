"""The training loop: carried state, K-segment BPTT, exact resume, divergence handling."""

import csv

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close, assert_runs_equal
from longssm import checkpoint as ckpt_io
from longssm.config import RunConfig
from longssm.data import ContiguousStreams
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models import lm as lm_module
from longssm.policies import make_policy
from longssm.train.loop import NonFiniteError, accumulate_gradients, train, unigram_entropy

TINY_MODEL = dict(mixer="mamba", d_model=16, n_layers=2, d_state=4, expand=2, d_conv=4)


def tiny_run(tmp_path, policy="previous", steps=6, **train_kw):
    return RunConfig.from_dict(
        {
            "model": dict(TINY_MODEL),
            "data": {
                "corpus": "markov:1:12:0:30000",
                "seq_len": 8,
                "batch_size": 4,
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": {
                **dict(
                    policy=policy, steps=steps, lr=1e-2, warmup_steps=2, log_every=1, eval_every=3,
                    eval_batches=2, diag_every=2, checkpoint_every=3, progress=False, keep_last=0,
                ),
                **train_kw,
            },
        }
    )


@pytest.mark.parametrize("d_conv", [0, 4], ids=["noconv", "conv4"])
def test_bptt_over_whole_sequence_equals_full_pass_gradients(d_conv):
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(TINY_MODEL, d_conv=d_conv, vocab_size=12))
    model = SSMLanguageModel(cfg).double()
    batch, seg, k = 2, 8, 4
    tokens = torch.randint(0, 12, (batch * (k * seg + 1),))
    loader = ContiguousStreams(tokens, batch_size=batch, seq_len=seg)
    policy = make_policy(f"bptt:{k}", model)
    loss, _ = accumulate_gradients(model, policy, loader, None, 1, 0, "cpu")
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    rows = tokens.view(batch, k * seg + 1)
    logits, _ = model(rows[:, :-1])
    full = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
    full.backward()
    assert abs(loss - full.item()) < 1e-12
    for name, p in model.named_parameters():
        assert_close(got[name], p.grad, name=name)

    # truncated BPTT (K=1) must differ: the test can fail
    model.zero_grad()
    loader = ContiguousStreams(tokens, batch_size=batch, seq_len=seg)
    accumulate_gradients(model, make_policy("previous", model), loader, None, k, 0, "cpu")
    diff = max((p.grad - got[n]).abs().max().item() for n, p in model.named_parameters())
    assert diff > 1e-6


def test_loop_carries_final_state_into_next_step(tmp_path, monkeypatch):
    seen = []
    original = lm_module.SSMLanguageModel.forward

    def spy(self, tokens, state=None):
        logits, final = original(self, tokens, state)
        if self.training:
            seen.append((state, final))
        return logits, final

    monkeypatch.setattr(lm_module.SSMLanguageModel, "forward", spy)
    train(tiny_run(tmp_path, "previous", steps=4, eval_every=0), tmp_path / "run", log=lambda *a: None)
    assert len(seen) == 4
    assert seen[0][0] is not None
    for (_, final), (init, _) in zip(seen[:-1], seen[1:]):
        for f_layer, i_layer in zip(final, init):
            for f, i in zip(f_layer, i_layer):
                assert torch.equal(f.detach(), i)
                assert not i.requires_grad


def test_resume_is_exact(tmp_path):
    for policy in ("previous", "fitted-noise"):
        once = train(tiny_run(tmp_path, policy), tmp_path / f"once-{policy}", log=lambda *a: None)
        half = tiny_run(tmp_path, policy, steps=6)
        half.train.steps = 3
        train(half, tmp_path / f"twice-{policy}", log=lambda *a: None)
        resumed = train(tiny_run(tmp_path, policy), tmp_path / f"twice-{policy}", resume=True, log=lambda *a: None)
        assert resumed.step == once.step == 6
        assert_runs_equal(tmp_path / f"once-{policy}", tmp_path / f"twice-{policy}")
        with open(tmp_path / f"once-{policy}" / "metrics.csv") as f:
            losses_once = [r["loss"] for r in csv.DictReader(f)]
        with open(tmp_path / f"twice-{policy}" / "metrics.csv") as f:
            losses_twice = [r["loss"] for r in csv.DictReader(f)]
        assert losses_once == losses_twice and len(losses_once) == 6


def test_resume_rejects_a_different_config(tmp_path):
    train(tiny_run(tmp_path, steps=3), tmp_path / "run", log=lambda *a: None)
    other = tiny_run(tmp_path, steps=6)
    other.model.d_model = 32
    with pytest.raises(ckpt_io.CheckpointError, match="model.d_model"):
        train(other, tmp_path / "run", resume=True, log=lambda *a: None)


def test_existing_run_is_not_overwritten(tmp_path):
    train(tiny_run(tmp_path, steps=3), tmp_path / "run", log=lambda *a: None)
    before = (tmp_path / "run" / "checkpoints").iterdir().__next__().stat().st_mtime_ns
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_run(tmp_path, steps=3), tmp_path / "run", log=lambda *a: None)
    after = (tmp_path / "run" / "checkpoints").iterdir().__next__().stat().st_mtime_ns
    assert before == after


def test_non_finite_state_names_step_and_layer(tmp_path, monkeypatch):
    original = lm_module.Block.forward_pending  # what the LM calls for each block
    calls = {"n": 0}

    def poisoned(self, x, pending, state=None):
        x, y, new_state = original(self, x, pending, state)
        if self is self._owner_blocks[1]:
            calls["n"] += 1
            if calls["n"] == 5:
                new_state = type(new_state)(*(t * float("nan") for t in new_state))
        return x, y, new_state

    monkeypatch.setattr(lm_module.Block, "forward_pending", poisoned)
    monkeypatch.setattr(lm_module.Block, "_owner_blocks", None, raising=False)
    cfg = tiny_run(tmp_path, steps=6, eval_every=0)
    original_init = lm_module.SSMLanguageModel.__init__

    def init(self, c):
        original_init(self, c)
        lm_module.Block._owner_blocks = list(self.blocks)

    monkeypatch.setattr(lm_module.SSMLanguageModel, "__init__", init)
    with pytest.raises(NonFiniteError, match=r"step 5.*layer 1"):
        train(cfg, tmp_path / "run", log=lambda *a: None)
    # the checkpoint of step 3 is intact and loadable
    model, ckpt, meta = ckpt_io.load_model(tmp_path / "run")
    assert meta["step"] == 3 and ckpt.name.endswith("00000003")


def load_tokens(tmp_path):
    from longssm.data import load_corpus

    return load_corpus("markov:1:12:0:30000", None, "train", cache_dir=tmp_path / "cache").tokens


def test_training_lowers_loss_below_unigram(tmp_path):
    cfg = tiny_run(tmp_path, "previous", steps=80, eval_every=80)
    result = train(cfg, tmp_path / "run", log=lambda *a: None)
    # order-1 chain over 12 symbols: unigram entropy ~2.45 nats, entropy rate ~1.90 nats
    unigram = unigram_entropy(load_tokens(tmp_path), 12)
    assert result.val_loss_stream is not None
    assert result.val_loss_stream < unigram - 0.25, (result.val_loss_stream, unigram)


def test_threads_option_sets_torch_and_numba_threads(tmp_path):
    from longssm.config import ConfigError

    with pytest.raises(ConfigError, match="train.threads"):
        tiny_run(tmp_path, threads=-1)
    before = torch.get_num_threads()
    try:
        train(tiny_run(tmp_path, steps=1, threads=2), tmp_path / "run", log=lambda *a: None)
        assert torch.get_num_threads() == 2
        numba = pytest.importorskip("numba")
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(before)
        try:
            import numba

            numba.set_num_threads(1)  # as tests/conftest.py pins it
        except ImportError:
            pass
