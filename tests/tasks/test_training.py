"""The tagging trainer on the training floor's machinery: carried evaluation, policies, resume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from longssm.cli import main
from longssm.tasks import TaskRunConfig, get_task
from longssm.tasks.trainer import build_model, evaluate_bins, forward_segments
from longssm.tasks.training import TaskTrainer, draw_episode, task_loss, train_model


def _model(task_name: str, mixer: str, layers: int = 2, seed: int = 0):
    task = get_task(task_name)
    cfg = TaskRunConfig(task=task_name, mixer=mixer, layers=layers, d_model=8, d_state=4)
    torch.manual_seed(seed)
    return task, build_model(task, cfg)


def _same_state(a, b):
    for la, lb in zip(a, b, strict=True):
        for ta, tb in zip(la, lb, strict=True):
            torch.testing.assert_close(ta, tb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("segment", [1, 5, 23, 40], ids=lambda s: f"seg{s}")
@pytest.mark.parametrize("mixer, task_name", [("mamba", "a5"), ("s4d", "mem-polynomial"),
                                              ("lstm", "flipflop")])
def test_carried_segments_equal_one_pass(mixer, task_name, segment):
    """The carried protocol's meaning: pieces with the state carried == one pass (float64)."""
    task, model = _model(task_name, mixer)
    model = model.double()
    b = task.batch(3, 22, np.random.default_rng(1))  # 22 or 23 positions
    inputs = torch.from_numpy(b.inputs)
    if task.continuous:
        inputs = inputs.double()
    whole, final = model(inputs)
    pieces, carried = forward_segments(model, inputs, segment)
    torch.testing.assert_close(pieces, whole, rtol=1e-10, atol=1e-12)
    _same_state(carried, final)


def test_carried_protocol_scores_like_reset():
    task, model = _model("flipflop", "mamba")
    cfg = TaskRunConfig(task="flipflop", test_bins=[(4, 10), (30, 40)], eval_samples=12,
                        eval_batch=6, train_lengths=(4, 10))
    model = model.double()
    reset = evaluate_bins(task, model, cfg, "reset")
    carried = evaluate_bins(task, model, cfg, "carried")
    assert reset == carried and reset[1]["n"] == 12


def _cfg(**kw) -> TaskRunConfig:
    base = dict(task="parity", mixer="mamba", layers=1, d_model=8, d_state=4,
                train_lengths=(6, 9), batch_size=4, steps=7, lr=1e-2, progress=False)
    return TaskRunConfig(**{**base, **kw})


def _train(cfg):
    task = get_task(cfg.task)
    torch.manual_seed(cfg.seed)
    model = build_model(task, cfg)
    history = train_model(task, model, cfg)
    return model, history


@pytest.mark.parametrize("policy", ["previous", "p-reset:0.5", "learned", "zero"])
def test_resume_equals_an_uninterrupted_run(tmp_path, policy):
    """Checkpoint at step 4 (in the middle of a 3-piece episode), resume to 7: the weights are
    bit for bit those of a run that never stopped, as are the losses."""
    whole, history = _train(_cfg(policy=policy, segments=3))
    run_dir = tmp_path / "run"
    _train(_cfg(policy=policy, segments=3, run_dir=str(run_dir), checkpoint_every=4))
    shutil.rmtree(run_dir / "checkpoints" / "ckpt-00000007")
    resumed, again = _train(_cfg(policy=policy, segments=3, run_dir=str(run_dir), resume=True))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert again["final_loss"] == history["final_loss"]
    assert (run_dir / "checkpoints" / "ckpt-00000007" / "model.safetensors").is_file()


def test_resume_refuses_a_changed_run(tmp_path):
    run_dir = str(tmp_path / "run")
    _train(_cfg(steps=3, run_dir=run_dir))
    with pytest.raises(ValueError, match="lr differ"):
        _train(_cfg(steps=3, lr=0.5, run_dir=run_dir, resume=True))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _train(_cfg(steps=3, run_dir=run_dir))


def _piece_losses(policy: str, reset: bool = True, steps: int = 6):
    """Per-step losses at lr 0 (the model never changes) and the episodes the trainer drew."""
    cfg = _cfg(policy=policy, segments=3, lr=0.0, steps=steps, reset_between_sequences=reset)
    task = get_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(task, cfg)
    trainer = TaskTrainer(task, model, cfg)
    episodes = []
    for _ in range(steps):
        if trainer.piece == 0:
            state = trainer.rng.bit_generator.state
            rng = np.random.default_rng()
            rng.bit_generator.state = state
            episodes.append(draw_episode(task, cfg, rng))
        trainer.train_step()
    return task, model, trainer.losses, episodes


def test_policies_set_each_piece_initial_state():
    """lr 0: under ``previous`` each piece's loss is that piece's part of one pass over the
    whole sequence; under ``zero`` it is the piece alone from zeros; the two differ."""
    task, model, prev, episodes = _piece_losses("previous")
    _, _, zero, _ = _piece_losses("zero")
    with torch.no_grad():
        for e, episode in enumerate(episodes):
            inputs, targets, mask = (torch.cat(t, 1) for t in zip(*episode))
            whole, _ = model(inputs)
            start = 0
            for p, (x, y, m) in enumerate(episode):
                part = whole[:, start:start + x.shape[1]]
                start += x.shape[1]
                expected = task_loss(task.kind, part, y, m).item()
                assert prev[3 * e + p] == pytest.approx(expected, rel=1e-5)
                alone = task_loss(task.kind, model(x)[0], y, m).item()
                assert zero[3 * e + p] == pytest.approx(alone, rel=1e-5)
    assert prev[0] == pytest.approx(zero[0], rel=1e-6)
    assert all(abs(a - b) > 1e-6 for a, b in zip(prev[1:3], zero[1:3]))


def test_no_reset_carries_across_sequences():
    """Without resets the first piece of the next sequence starts from the carried state."""
    _, _, reset, _ = _piece_losses("previous", reset=True)
    _, _, carry, _ = _piece_losses("previous", reset=False)
    assert reset[:3] == carry[:3] and abs(reset[3] - carry[3]) > 1e-6


def test_learned_policy_trains_its_state():
    cfg = _cfg(policy="learned", segments=1, steps=5, lr=5e-2)
    task = get_task(cfg.task)
    torch.manual_seed(0)
    trainer = TaskTrainer(task, build_model(task, cfg), cfg)
    for _ in range(cfg.steps):
        trainer.train_step()
    assert any(p.abs().max() > 0 for p in trainer.policy.parameters())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--policy", "nosuch"], "policy"),
        (["--policy", "bptt:2"], "one optimiser step per segment"),
        (["--segments", "9"], "segments must lie in [1, 4]"),
        (["--resume"], "need a --run-dir"),
    ],
)
def test_bad_training_options_exit_2(tmp_path, capsys, extra, message):
    code = main(["task", "parity", "--train-lengths", "4:8", "--quick", "--steps", "2", "--quiet",
                 "--out", str(tmp_path / "r.json"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_cli_both_protocols_and_checkpoints(tmp_path, capsys):
    out, run_dir = tmp_path / "r.json", tmp_path / "run"
    args = ["task", "flipflop", "--mixer", "gru", "--layers", "1", "--train-lengths", "4:8",
            "--test-lengths", "4:8,10:30", "--quick", "--steps", "4", "--quiet", "--out", str(out),
            "--protocol", "both", "--policy", "previous", "--segments", "2", "--run-dir",
            str(run_dir)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "carried protocol (segments of 8)" in text
    assert (run_dir / "checkpoints" / "ckpt-00000004" / "meta.json").is_file()
