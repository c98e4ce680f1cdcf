"""``longssm eval --tensorboard``: the length curves (loss and its interval per L, per protocol)
read back with TensorBoard's event reader equal the results JSON; one folder per results file."""

from __future__ import annotations

import json
import sys

import pytest

from longssm.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TRAIN = ["--quiet", "--data.corpus=markov:1:8:0:6000", "--model.mixer=s4d", "--model.d_model=8",
         "--model.n_layers=1", "--data.seq_len=8", "--data.batch_size=4", "--train.steps=1",
         "--train.eval_batches=1"]  # fmt: skip
EVAL = ["--lengths", "8,16,32", "--n-tokens", "64", "--protocol", "all",
        "--no-progress", "--device", "cpu", "--tensorboard"]  # fmt: skip


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--out", str(tmp_path / "run"), *TRAIN]) == 0
    return tmp_path / "run"


def _read(directory):
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags().get("tensors", [])


def test_eval_curves_read_back_equal_the_json(run, capsys):
    assert main(["eval", str(run), *EVAL]) == 0
    out = capsys.readouterr().out
    results_path = next((run / "eval").glob("results-*.json"))
    results = json.loads(results_path.read_text())
    tb = run / "tb" / "eval" / results_path.stem
    assert results["tensorboard"] == str(tb) and f"TensorBoard scalars to {tb}" in out
    scalars, texts = _read(tb)
    for protocol in ("reset", "stream", "shuffled"):
        records = [r for r in results["records"] if r["protocol"] == protocol]
        assert len(records) == 3
        for key in ("loss", "loss_low", "loss_high", "bits_per_byte"):
            got = scalars[f"eval/{protocol}/{key}"]
            assert [s for s, _ in got] == [8, 16, 32]
            for (_, value), record in zip(got, records):
                assert value == pytest.approx(record[key], rel=1e-6), (protocol, key)
            on_log_axis = scalars[f"eval_log2L/{protocol}/{key}"]  # round(100 log2 L)
            assert [s for s, _ in on_log_axis] == [300, 400, 500]
            assert [v for _, v in on_log_axis] == [v for _, v in got]
        lows = [v for _, v in scalars[f"eval/{protocol}/loss_low"]]
        highs = [v for _, v in scalars[f"eval/{protocol}/loss_high"]]
        assert all(lo < hi for lo, hi in zip(lows, highs))
    assert "eval/reset/verdict/text_summary" in texts


def test_out_names_and_force(run, tmp_path, capsys):
    out = tmp_path / "cmp"
    for _ in range(2):
        assert main(["eval", str(run), *EVAL, "--out", str(out), "--name", "zero"]) == 0
    # the second evaluation went to zero-2, like its results files; nothing was replaced
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["zero", "zero-2"]
    assert json.loads((out / "zero-2.json").read_text())["tensorboard"] == str(out / "tb" / "zero-2")
    assert main(["eval", str(run), *EVAL, "--out", str(out), "--name", "zero", "--force"]) == 0
    events = list((out / "tb" / "zero").glob("events.out.tfevents.*"))
    assert len(events) == 1
    # one curve: each L once, not once per evaluation
    assert [s for s, _ in _read(out / "tb" / "zero")[0]["eval/reset/loss"]] == [8, 16, 32]


def test_missing_tensorboard_is_one_line(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    capsys.readouterr()
    assert main(["eval", str(run), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "pip install 'longssm[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not (run / "eval").exists() and not (run / "tb").exists()
