"""``--init-from RUN``: a longssm run as the model source of ``train`` and ``extend``.

The new run's model before its first step computes exactly the source run's logits (float64,
``torch.equal``), its tokenizer is the source's stored one (a BPE is not retrained), a
contradicting ``--model.*`` is one line, a missing / corrupt / foreign source is one line with
nothing written, and the new run resumes exactly.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import longssm.train.loop as train_loop
from helpers import assert_resume_equals_straight
from longssm.checkpoint import checkpoint_dirs, load_model
from longssm.cli import main

WORDS = ["state", "space", "model", "hidden", "length", "extension", "carry", "token", "the", "of"]
SMALL = ["--data.seq_len=8", "--data.batch_size=2", "--train.eval_batches=1", "--quiet",
         "--train.dtype=float64"]  # fmt: skip


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    (tmp_path / "corpus").mkdir()
    for d in range(6):
        ids = torch.randint(0, len(WORDS), (300,), generator=g).tolist()
        (tmp_path / "corpus" / f"doc{d}.txt").write_text(" ".join(WORDS[i] for i in ids) + "\n")
    return tmp_path


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _source(env, capsys, model=("--model.mixer=s4d", "--model.d_model=8", "--model.n_layers=2"),
            tokenizer="bytes", name="src"):  # fmt: skip
    """A trained source run (2 steps, float64)."""
    code, _, err = _run(["train", "--out", str(env / name), f"--data.corpus={env / 'corpus'}",
                         f"--data.tokenizer={tokenizer}", "--train.steps=2", *model, *SMALL],
                        capsys)  # fmt: skip
    assert code == 0, err
    return env / name


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize(
    "model, tokenizer",
    [
        (("--model.mixer=s4d", "--model.d_model=8", "--model.n_layers=2"), "bytes"),
        (("--model.mixer=mamba", "--model.d_model=8", "--model.n_layers=1", "--model.d_state=4",
          "--model.d_conv=4"), "bpe:280"),
    ],
    ids=["s4d-bytes", "mamba-bpe"],
)
def test_init_from_run_starts_from_its_logits(model, tokenizer, env, capsys, monkeypatch):
    source = _source(env, capsys, model, tokenizer)
    tokens = torch.randint(0, 257, (2, 21))
    seen = {}
    real_build = train_loop.build_run

    def build_and_score(cfg, run_dir, resume, log):
        # the new run's model right after it is built: step 0, before any optimiser step
        run = real_build(cfg, run_dir, resume, log)
        with torch.no_grad():
            seen["logits"] = run.model(tokens)[0].clone()
        return run

    monkeypatch.setattr(train_loop, "build_run", build_and_score)
    out = env / "post"
    code, stdout, err = _run(["train", "--init-from", str(source), "--out", str(out),
                              f"--data.corpus={env / 'corpus'}", "--train.policy=previous",
                              "--train.steps=3", *SMALL], capsys)  # fmt: skip
    assert code == 0, err
    ours, ckpt, meta = load_model(source)
    with torch.no_grad():
        expected = ours(tokens)[0]
    assert seen["logits"].dtype == torch.float64
    assert torch.equal(seen["logits"], expected)
    cfg = json.loads((out / "config.json").read_text())
    # the run resolved once to its latest checkpoint: config, tokenizer and weights all from it
    assert cfg["train"]["init_from"] == str(ckpt) == str(checkpoint_dirs(source)[-1])
    assert cfg["model"] == meta["config"]["model"]
    expected_spec = "bytes" if tokenizer == "bytes" else f"run:{ckpt}"
    assert cfg["data"]["tokenizer"] == expected_spec
    post_meta = load_model(out)[2]
    assert post_meta["tokenizer"] == meta["tokenizer"] and post_meta["step"] == 3
    # training moved the weights away from the source's
    with torch.no_grad():
        assert not torch.equal(load_model(out)[0](tokens)[0], expected)


def test_init_from_run_resumes_exactly(env, capsys):
    """3 steps straight == 2 steps, then a resume for the third (from the new run's checkpoint)."""
    source = _source(env, capsys)
    common = ["--init-from", str(source), f"--data.corpus={env / 'corpus'}",
              "--train.policy=fitted-noise", "--train.checkpoint_every=2", *SMALL]  # fmt: skip
    assert_resume_equals_straight(lambda args: _run(args, capsys), env, common)


def _corrupt(source):
    weights = checkpoint_dirs(source)[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "case, message",
    [
        ("contradiction", "--model.d_model=16 contradicts the model of run"),
        ("missing", "no such run or checkpoint"),
        ("corrupt", "is damaged"),
        ("foreign", "is neither a longssm run"),
    ],
)
def test_bad_run_source(case, message, env, capsys):
    source = env / "nothing" if case == "missing" else _source(env, capsys)
    if case == "corrupt":
        _corrupt(source)
    elif case == "foreign":
        source = env / "corpus"
    extra = ["--model.d_model=16"] if case == "contradiction" else []
    before = _digests(source) if source.exists() else {}
    out = env / "post"
    code, _, err = _run(["train", "--init-from", str(source), "--out", str(out),
                         f"--data.corpus={env / 'corpus'}", "--train.steps=1", *SMALL, *extra],
                        capsys)  # fmt: skip
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("longssm: error:")
    assert not out.exists()
    assert (_digests(source) if source.exists() else {}) == before


def test_extend_init_from_run(env, capsys):
    source = _source(env, capsys)
    out = env / "ext"
    code, _, err = _run(["extend", "--init-from", str(source), "--corpus", str(env / "corpus"),
                         "--quick", "--policies", "passing,previous", "--seq-len", "8",
                         "--steps", "2", "--max-length", "32", "--n-tokens", "64", "--quiet",
                         "--data.tokens_per_step=16", "--train.eval_every=0",
                         "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary["runs"]] == ["passing", "previous"]
    source_model = json.loads((source / "config.json").read_text())["model"]
    for name in ("passing", "previous"):
        cfg = json.loads((out / "runs" / name / "config.json").read_text())
        assert cfg["train"]["init_from"] == str(checkpoint_dirs(source)[-1])
        assert cfg["model"] == source_model
