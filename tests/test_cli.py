"""The command line: bad input gives one line on stderr, exit code 2, and nothing overwritten."""

import os

import pytest

from longssm.cli import main

TINY = [
    "--model.d_model=16", "--model.n_layers=1", "--model.d_state=4", "--data.seq_len=8",
    "--data.batch_size=2", "--train.steps=2", "--train.eval_batches=1", "--train.log_every=1",
]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_train_generate_and_resume(cache, capsys):
    out = str(cache / "run")
    code, stdout, _ = run_cli(
        ["train", "--out", out, "--quiet", "--data.corpus=markov:1:8:0:5000", *TINY], capsys
    )
    assert code == 0 and "done: 2 steps" in stdout
    code, stdout, _ = run_cli(["generate", out, "-n", "5", "--prompt", ""], capsys)
    assert code == 0
    code, stdout, _ = run_cli(
        ["train", "--out", out, "--quiet", "--resume", "--data.corpus=markov:1:8:0:5000",
         *TINY[:-3], "--train.steps=3", "--train.eval_batches=1", "--train.log_every=1"],
        capsys,
    )
    assert code == 0 and "done: 3 steps" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.toml"], "config file not found"),
        (["train", "--train.policy=unknown"], "train.policy"),
        (["train", "--data.seq_len=0"], "data.seq_len must be > 0"),
        (["train", "--data.corpus=/nonexistent/path/x.txt"], "nonexistent"),
        (["generate", "/nonexistent/run"], "no such run or checkpoint"),
        (["generate", "/nonexistent/run", "--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto"),
    ],
)
def test_bad_input_exits_2_with_one_line(cache, capsys, args, message):
    code, _, err = run_cli([*args, "--out", str(cache / "r")] if args[0] == "train" else args, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_empty_and_binary_corpora(cache, capsys):
    empty = cache / "empty"
    empty.mkdir()
    code, _, err = run_cli(["train", f"--data.corpus={empty}", "--out", str(cache / "r1"), *TINY], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    binary = cache / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    code, _, err = run_cli(["train", f"--data.corpus={binary}", "--out", str(cache / "r2"), *TINY], capsys)
    assert code == 2 and "blob.bin" in err


def test_existing_run_and_foreign_checkpoint_are_left_alone(cache, capsys):
    out = str(cache / "run")
    corpus = "--data.corpus=markov:1:8:0:5000"
    assert run_cli(["train", "--out", out, "--quiet", corpus, *TINY], capsys)[0] == 0
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    stamp = os.stat(os.path.join(out, "checkpoints", ckpts[-1], "model.safetensors")).st_mtime_ns
    code, _, err = run_cli(["train", "--out", out, "--quiet", corpus, *TINY], capsys)
    assert code == 2 and "already holds a run" in err
    code, _, err = run_cli(
        ["train", "--out", out, "--quiet", "--resume", corpus, *TINY, "--model.d_model=32"], capsys
    )
    assert code == 2 and "model.d_model" in err
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ckpts
    assert os.stat(os.path.join(out, "checkpoints", ckpts[-1], "model.safetensors")).st_mtime_ns == stamp


def test_corrupt_checkpoint(cache, capsys):
    out = cache / "run"
    corpus = "--data.corpus=markov:1:8:0:5000"
    assert run_cli(["train", "--out", str(out), "--quiet", corpus, *TINY], capsys)[0] == 0
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = run_cli(["generate", str(out), "-n", "3"], capsys)
    assert code == 2 and "is damaged" in err
    (ckpt / "meta.json").write_text("{broken")
    code, _, err = run_cli(["generate", str(out), "-n", "3"], capsys)
    assert code == 2 and "corrupt checkpoint metadata" in err


def test_every_command_help_prints_without_format_debris(capsys):
    """``longssm <command> --help`` for every command: exit 0, and no doubled percent signs
    (argparse does not %-format a description, so "95%%" printed as written)."""
    import argparse

    from longssm.cli import build_parser, main

    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = sorted(commands[0].choices)
    assert "train" in names and "extend" in names
    for name in names:
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "usage: longssm" in out and "%%" not in out, name
