"""Shared helpers of the fault suite: a tiny run, the CLI in-process, damage to files."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from longssm.cli import main

CORPUS = "--data.corpus=markov:1:8:0:5000"
TINY = [
    CORPUS, "--model.d_model=16", "--model.n_layers=1", "--model.d_state=4",
    "--data.seq_len=8", "--data.batch_size=2", "--train.eval_batches=1", "--train.log_every=1",
    "--train.diag_every=1", "--train.eval_every=0", "--train.keep_last=0", "--train.threads=1",
]


def cli(args, capsys):
    """(exit code, stdout, stderr) of ``longssm ARGS`` run in this process."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_tiny(out: Path, capsys, steps: int = 2, every: int = 1, *extra) -> None:
    code, _, err = cli(["train", "--out", out, "--quiet", *TINY, f"--train.steps={steps}",
                        f"--train.checkpoint_every={every}", *extra], capsys)
    assert code == 0, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("longssm: error: "), err
    return lines[0]


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "checkpoints").iterdir() if p.name.startswith("ckpt-"))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    # cloned: load_file maps the file, and a test may damage it afterwards
    return {k: v.clone() for k, v in load_file(str(ckpt / "model.safetensors")).items()}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime_ns), to show that nothing was modified."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
