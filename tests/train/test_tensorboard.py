"""``train.tensorboard``: event files under RUN/tb/ hold the CSV's scalars and the diagnostics."""

from __future__ import annotations

import csv

import pytest

from longssm.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ARGS = ["--quiet", "--data.corpus=markov:1:8:0:6000", "--model.mixer=mamba", "--model.d_model=16",
        "--model.n_layers=2", "--model.d_state=4", "--data.seq_len=8", "--data.batch_size=4",
        "--train.log_every=1", "--train.eval_every=2", "--train.eval_batches=1",
        "--train.diag_every=2", "--train.tensorboard=true"]  # fmt: skip


def _scalars(run):
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_the_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--train.steps=4", *ARGS]) == 0
    scalars = _scalars(run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [s for s, _ in scalars["train/loss"]] == [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        for (_, value), row in zip(scalars[f"train/{key}"], rows):
            assert value == pytest.approx(float(row[key]), rel=1e-6)
    val = [(int(r["step"]), float(r["val_loss_reset"])) for r in rows if r["val_loss_reset"]]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars["val/loss_reset"]] == val
    for tag in ("state/max_norm/layer0", "state/max_norm/layer1", "eig/max_re/layer1",
                "eig/max_abs/layer0", "diag/grad_weight_ratio"):  # fmt: skip
        assert [s for s, _ in scalars[tag]] == [2, 4], tag
    assert all(v < 0 for _, v in scalars["eig/max_re/layer0"])
    # a resume continues the same curves without duplicate steps
    assert main(["train", "--out", str(run), "--resume", "--train.steps=6", *ARGS]) == 0
    assert [s for s, _ in _scalars(run)["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)
    assert main(["train", "--out", str(tmp_path / "r"), "--train.steps=1", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "pip install 'longssm[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
