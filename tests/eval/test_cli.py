"""``longssm eval`` / ``longssm plot`` glue: argument parsing, errors, and an end-to-end run."""

import argparse

import pytest

from longssm.checkpoint import save_checkpoint
from longssm.eval.cli import (
    PLOT_KINDS,
    add_eval_arguments,
    add_plot_arguments,
    parse_lengths,
    run_eval,
    run_plot,
)
from longssm.eval.errors import EvalError
from longssm.eval.plots import PLOTS
from longssm.eval.results import load_results


def parse(adder, argv):
    parser = argparse.ArgumentParser()
    adder(parser)
    return parser.parse_args(argv)


def test_parse_lengths():
    assert parse_lengths("16:128") == [16, 32, 64, 128]
    # a range doubles from its low end and always includes its high end
    assert parse_lengths("16:100") == [16, 32, 64, 100]
    assert parse_lengths("100, 10,16:32,10") == [10, 16, 32, 100]
    for bad in ("", "16,,32", "a:b", "0", "64:16", "16:32:2", "-4"):
        with pytest.raises(EvalError):
            parse_lengths(bad)


def test_plot_kinds_match_plots():
    assert set(PLOT_KINDS) == set(PLOTS)


@pytest.fixture
def checkpoint(tmp_path, conv_model):
    from longssm.data import ByteTokenizer

    config = {
        "model": conv_model.cfg.to_dict(),
        "data": {"corpus": "markov:1:11:0:80000", "seq_len": 16, "cache_dir": str(tmp_path / "c")},
        "train": {"dtype": "float64", "policy": "previous"},
    }
    meta = {"config": config, "tokenizer": ByteTokenizer().to_dict(), "step": 10}
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-00000010", conv_model, meta)


def test_eval_end_to_end_then_plot(checkpoint, tmp_path, capsys):
    argv = [str(tmp_path / "run"), "--lengths", "8:32", "--protocol", "all", "--n-tokens", "128",
            "--batch-size", "2", "--chunk-size", "24", "--positions", "--positions-length", "16",
            "--effrem", "--effrem-length", "16", "--effrem-sequences", "2", "--no-progress",
            "--device", "cpu"]
    assert run_eval(parse(add_eval_arguments, argv)) == 0
    out = capsys.readouterr().out
    assert "shuffled" in out and "length extension" in out and "EffRem_T=16" in out
    assert "±" in out
    path = tmp_path / "run" / "eval" / "results-ckpt-00000010.json"
    results = load_results(path)
    assert results["run"] == "run" and results["train_length"] == 16
    assert results["policy"] == "previous" and results["lengths"] == [8, 16, 32]
    assert len(results["records"]) == 9 and len(results["positions"]) == 3
    assert set(results["classification"]) == {"reset", "stream", "shuffled"}
    assert results["settings"]["dtype"] == "float64" and results["effrem"]["length"] == 16
    for r in results["records"]:
        assert r["loss_low"] <= r["loss"] <= r["loss_high"]
    # verdicts use only lengths >= the training length (16)
    assert {v["l0"] for v in results["classification"].values()} == {16}
    # a second run does not replace the first
    assert run_eval(parse(add_eval_arguments, argv[:5] + ["--no-progress", "--lengths", "8"])) == 0
    assert (path.parent / "results-ckpt-00000010-2.json").is_file()
    assert load_results(path)["lengths"] == [8, 16, 32]
    for kind in PLOT_KINDS:
        fig = tmp_path / f"{kind}.png"
        assert run_plot(parse(add_plot_arguments, [str(path), "--kind", kind, "--out", str(fig)])) == 0
        assert fig.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{run}", "--lengths", "8,x"], "bad lengths"),
        (["{run}", "--protocol", "carry"], "unknown protocol"),
        (["{tmp}/nowhere"], "no such run"),
        (["{run}", "--chunk-size", "0"], "chunk-size"),
        (["{run}", "--confidence", "1.5"], "confidence"),
        (["{run}", "--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto"),
    ],
)
def test_eval_bad_input(checkpoint, tmp_path, argv, message):
    argv = [a.format(run=tmp_path / "run", tmp=tmp_path) for a in argv]
    with pytest.raises(ValueError, match=message):
        run_eval(parse(add_eval_arguments, argv + ["--no-progress"]))


def test_plot_bad_input(tmp_path):
    with pytest.raises(EvalError, match="unknown plot kind"):
        run_plot(parse(add_plot_arguments, [str(tmp_path), "--kind", "pie", "--out", "x.png"]))
    with pytest.raises(EvalError, match="no such results"):
        run_plot(parse(add_plot_arguments, [str(tmp_path / "r.json"), "--out", "x.png"]))
