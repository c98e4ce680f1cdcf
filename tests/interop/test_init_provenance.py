"""Provenance of ``--init-from`` and hashing each source file once per command.

A run source is resolved once, to its latest checkpoint, and the new run's config, tokenizer and
weights all come from that checkpoint even when the source writes a newer one in between; the
new run's checkpoints record ``init_source`` (kind, checkpoint, step, SHA-256 of the weights file
read, checked here against ``hashlib`` on the file). ``checkpoint.file_sha256`` hashes a file
once per process per version (counted), but never caches a file younger than its ctime margin.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, OrderedDict

import pytest
import torch

import longssm.checkpoint as ckpt_io
import longssm.train.loop as train_loop
from longssm.checkpoint import checkpoint_dirs, read_tensors
from longssm.cli import main
from longssm.interop.pretrained import pretrained_run_config
from longssm.train.loop import train

CORPUS = "markov:1:8:0:6000"
MODEL = ["--model.mixer=s4d", "--model.d_model=8", "--model.n_layers=1"]
SMALL = ["--data.seq_len=8", "--data.batch_size=2", "--train.eval_batches=1", "--quiet",
         "--train.dtype=float64", f"--data.corpus={CORPUS}"]  # fmt: skip


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--out", str(tmp_path / "src"), "--train.steps=2", *MODEL, *SMALL]) == 0
    return tmp_path / "src"


@pytest.fixture
def counted(monkeypatch):
    """Hash calls by real path, with an empty cache that accepts files of any age."""
    calls: Counter = Counter()
    real = ckpt_io._hash_file

    def counting(path):
        calls[os.path.realpath(path)] += 1
        return real(path)

    monkeypatch.setattr(ckpt_io, "_hash_file", counting)
    monkeypatch.setattr(ckpt_io, "_SHA_CACHE", OrderedDict())
    monkeypatch.setattr(ckpt_io, "SHA_CACHE_MIN_AGE_S", 0.0)
    return calls


def test_recorded_sha_is_the_files_and_survives_resume(source, tmp_path, capsys):
    ckpt = checkpoint_dirs(source)[-1]
    out = tmp_path / "post"
    args = ["train", "--init-from", str(source), "--out", str(out), *SMALL,
            "--train.checkpoint_every=1"]  # fmt: skip
    assert main([*args, "--train.steps=1"]) == 0
    assert "initialised from run" in capsys.readouterr().out
    assert main(["train", "--out", str(out), "--resume", "--quiet", "--train.steps=2"]) == 0
    records = [json.loads((c / "meta.json").read_text())["init_source"]
               for c in checkpoint_dirs(out)]  # fmt: skip
    assert len(records) == 2 and records[0] == records[1]  # carried across the resume
    record = records[0]
    weights = ckpt / "model.safetensors"
    assert record["kind"] == "run" and record["step"] == 2
    assert record["checkpoint"] == str(ckpt.resolve())
    assert record["sha256"] == {str(weights.resolve()): _sha(weights)}


def test_config_and_weights_come_from_one_checkpoint(source, tmp_path, monkeypatch):
    """A newer checkpoint appearing between reading the config and loading the weights is not
    used: the weights at step 0 are those of the checkpoint the config was read from."""
    overrides = [a for a in SMALL if a != "--quiet"] + ["--train.steps=1", "--train.progress=false"]
    cfg = pretrained_run_config(None, overrides, source)
    first = checkpoint_dirs(source)[-1]
    # the source keeps training: a newer checkpoint (other weights) appears now
    assert main(["train", "--out", str(source), "--resume", "--quiet", "--train.steps=4"]) == 0
    newest = checkpoint_dirs(source)[-1]
    assert newest != first and first.exists()
    seen = {}
    real_build = train_loop.build_run

    def build_and_keep(cfg, run_dir, resume, log):
        run = real_build(cfg, run_dir, resume, log)
        seen.update({k: v.clone() for k, v in run.model.state_dict().items()})
        return run

    monkeypatch.setattr(train_loop, "build_run", build_and_keep)
    train(cfg, tmp_path / "post", log=lambda *a: None)
    old, new = read_tensors(first, "model"), read_tensors(newest, "model")
    assert all(torch.equal(seen[k], old[k]) for k in old)
    assert any(not torch.equal(seen[k], new[k]) for k in new)
    record = json.loads((checkpoint_dirs(tmp_path / "post")[-1] / "meta.json").read_text())
    record = record["init_source"]
    assert record["checkpoint"] == str(first.resolve()) and record["step"] == 2
    assert list(record["sha256"].values()) == [_sha(first / "model.safetensors")]


def test_train_init_from_hashes_each_file_once(source, tmp_path, counted):
    weights = os.path.realpath(checkpoint_dirs(source)[-1] / "model.safetensors")
    assert main(["train", "--init-from", str(source), "--out", str(tmp_path / "post"),
                 "--train.steps=1", *SMALL]) == 0  # fmt: skip
    assert counted[weights] == 1
    assert set(counted.values()) == {1}, counted  # the new run's own files too


def test_extend_init_from_hashes_the_source_once(source, tmp_path, counted):
    weights = os.path.realpath(checkpoint_dirs(source)[-1] / "model.safetensors")
    assert main(["extend", "--init-from", str(source), "--corpus", CORPUS, "--quick",
                 "--policies", "zero,previous", "--seq-len", "8", "--steps", "1",
                 "--max-length", "32", "--n-tokens", "32", "--quiet",
                 "--data.tokens_per_step=16", "--train.eval_every=0",
                 "--out", str(tmp_path / "ext")]) == 0  # fmt: skip
    assert counted[weights] == 1, counted


def test_fresh_files_are_rehashed_and_versions_are_keyed(tmp_path, monkeypatch):
    calls: Counter = Counter()
    real = ckpt_io._hash_file
    monkeypatch.setattr(ckpt_io, "_hash_file", lambda p: calls.update([str(p)]) or real(p))
    monkeypatch.setattr(ckpt_io, "_SHA_CACHE", OrderedDict())
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    # just written: younger than the margin, so never cached (a same-size rewrite in the same
    # timestamp tick would otherwise go unseen)
    assert ckpt_io.file_sha256(f) == ckpt_io.file_sha256(f) == _sha(f)
    assert calls[str(f)] == 2
    monkeypatch.setattr(ckpt_io, "SHA_CACHE_MIN_AGE_S", 0.0)
    calls.clear()
    assert ckpt_io.file_sha256(f) == ckpt_io.file_sha256(f) == _sha(f)
    assert calls[str(f)] == 1
    f.write_bytes(b"b" * 101)  # a new version: another key, hashed again
    assert ckpt_io.file_sha256(f) == _sha(f) and calls[str(f)] == 2


def test_extend_resume_keeps_the_sweeps_source(source, tmp_path, capsys):
    """A policy added on --resume starts from the checkpoint the sweep started from, not from a
    newer one the source wrote since; another --init-from on resume is one line."""
    first = checkpoint_dirs(source)[-1]
    out = tmp_path / "ext"
    common = ["--corpus", CORPUS, "--quick", "--seq-len", "8", "--steps", "1", "--max-length",
              "32", "--n-tokens", "32", "--quiet", "--data.tokens_per_step=16",
              "--train.eval_every=0", "--out", str(out)]  # fmt: skip
    assert main(["extend", "--init-from", str(source), "--policies", "zero", *common]) == 0
    assert main(["train", "--out", str(source), "--resume", "--quiet", "--train.steps=4"]) == 0
    assert checkpoint_dirs(source)[-1] != first
    assert main(["extend", "--init-from", str(source), "--policies", "zero,previous", *common,
                 "--resume"]) == 0  # fmt: skip
    for name in ("zero", "previous"):
        cfg = json.loads((out / "runs" / name / "config.json").read_text())
        assert cfg["train"]["init_from"] == str(first)
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), "--train.steps=1", *MODEL, *SMALL]) == 0
    assert main(["extend", "--init-from", str(other), "--policies", "zero", *common,
                 "--resume"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "is not the source this sweep started from" in err and len(err.splitlines()) == 1
