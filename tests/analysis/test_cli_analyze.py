"""``longssm analyze``: figures + JSON on a tiny trained run; bad input is one line and exit 2,
with nothing written."""

from __future__ import annotations

import json

import pytest

from longssm.cli import main

TINY = ["--model.mixer=mamba", "--model.d_model=16", "--model.n_layers=2", "--model.d_state=4",
        "--model.d_conv=0", "--data.seq_len=8", "--data.batch_size=2", "--train.steps=2",
        "--train.eval_batches=1", "--train.log_every=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    docs = root / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"d{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i}\n" * 40)
    mp = pytest.MonkeyPatch()
    mp.setenv("LONGSSM_CACHE", str(root / "cache"))
    assert main(["train", "--out", str(root / "run"), "--quiet", f"--data.corpus={docs}", *TINY]) == 0
    yield root
    mp.undo()


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_attention_writes_figure_and_json(tiny_run, capsys):
    out = tiny_run / "att.png"
    code, _, err = run(["analyze", "attention", str(tiny_run / "run"), "--text", "def f(x):",
                        "--kind", "block", "--channels", "1", "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads(out.with_suffix(".json").read_text())
    assert out.exists() and len(data["layers"]) == 2
    assert len(data["layers"][0]["mean"]) == len("def f(x):") and "1" in data["layers"][0]["channels"]


def test_reliance_and_prophecy(tiny_run, capsys):
    out = tiny_run / "rel.png"
    code, _, err = run(["analyze", "reliance", str(tiny_run / "run"), "--lengths", "1,4", "--rows", "2",
                        "--split", "train", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads(out.with_suffix(".json").read_text())
    layer = data["runs"][0]["layers"][0]
    assert data["positions"] == [1, 2, 4] and all(lo <= m <= hi for m, lo, hi in
                                                  zip(layer["mean"], layer["low"], layer["high"]))
    out = tiny_run / "pro.png"
    code, _, err = run(["analyze", "prophecy", "--N", "4,8", "--dt", "0.05", "--replicates", "2",
                        "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["N"] for r in rows] == [4, 8] and rows[1]["rmse"][0] < rows[1]["persistence_rmse"][0]


@pytest.mark.parametrize("args, message", [
    (["attention", "{run}", "--text", "abc", "--layer", "2"], "layer must be an integer in [0, 2)"),
    (["attention", "{run}", "--text", "x" * 20, "--max-length", "10"], "more than --max-length 10"),
    (["attention", "/nonexistent/run", "--text", "abc"], "no such run"),
    (["prophecy", "--measure", "legx"], "unknown measure 'legx'"),
    (["prophecy", "--signal", "sine"], "unknown signal"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_run, capsys, args, message):
    out = tiny_run / "bad" / "fig.png"
    args = [a.replace("{run}", str(tiny_run / "run")) for a in args]
    code, _, err = run(["analyze", *args, "--out", str(out)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.parent.exists()
