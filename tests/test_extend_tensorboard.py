"""``longssm extend --tensorboard``: each run's length curves under OUT/tb/<run>, read back with
TensorBoard's event reader equal to the results JSON; written on --resume when missing; without
tensorboard a one-line error before anything is trained or written."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from longssm.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["--corpus", "markov:1:8:0:8000", "--steps", "2", "--max-length", "32", "--n-tokens", "64",
        "--quiet", "--quick", "--model.d_model=8", "--model.d_state=4", "--model.n_layers=1",
        "--data.tokens_per_step=64", "--train.eval_every=0", "--train.warmup_steps=1",
        "--seq-len", "8", "--policies", "zero,previous"]  # fmt: skip


def _scalars(directory):
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _check_curves(out, name):
    results = json.loads((out / "results" / f"{name}.json").read_text())
    scalars = _scalars(out / "tb" / name)
    for protocol in ("reset", "stream", "shuffled"):
        records = sorted((r for r in results["records"] if r["protocol"] == protocol),
                         key=lambda r: r["length"])  # fmt: skip
        for key in ("loss", "loss_low", "loss_high"):
            got = scalars[f"eval/{protocol}/{key}"]
            assert [s for s, _ in got] == [r["length"] for r in records] == [16, 32]
            assert [v for _, v in got] == pytest.approx([r[key] for r in records], rel=1e-6)


def test_extend_tensorboard_overlays_the_policies(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ext"
    assert main(["extend", *TINY, "--out", str(out), "--tensorboard"]) == 0
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["previous", "zero"]
    for name in ("zero", "previous"):
        _check_curves(out, name)
    # the two policies are different curves (not one written twice)
    assert _scalars(out / "tb" / "zero") != _scalars(out / "tb" / "previous")
    # a resumed sweep whose results are reused writes the curves that are missing
    shutil.rmtree(out / "tb" / "zero")
    assert main(["extend", *TINY, "--out", str(out), "--tensorboard", "--resume"]) == 0
    _check_curves(out, "zero")
    assert len(list((out / "tb" / "previous").glob("events.out.tfevents.*"))) == 1


def test_extend_without_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "ext"
    assert main(["extend", *TINY, "--out", str(out), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'longssm[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
