"""Hugging Face directories in every command: a random MambaForCausalLM / Mamba2ForCausalLM saved
with ``save_pretrained`` plus a locally trained ``tokenizer.json`` -> ``train --init-from`` ->
``eval`` -> ``export --hf`` -> transformers' logits equal ours (float32, < 1e-4)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helpers import assert_close, assert_resume_equals_straight

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from longssm.checkpoint import load_model  # noqa: E402
from longssm.cli import main  # noqa: E402
from longssm.data import HFTokenizer  # noqa: E402
from longssm.interop.pretrained import load_source  # noqa: E402

WORDS = ["state", "space", "model", "hidden", "length", "extension", "carry", "token", "the", "of"]
TOKENIZER_SIZE = 290
MODEL_VOCAB = 300


def _write_corpus(root):
    g = torch.Generator().manual_seed(0)
    root.mkdir()
    for d in range(6):
        ids = torch.randint(0, len(WORDS), (400,), generator=g).tolist()
        (root / f"doc{d}.txt").write_text(" ".join(WORDS[i] for i in ids) + "\n")
    return root


def _tokenizer_json(path, size=TOKENIZER_SIZE):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([" ".join(WORDS * 3)] * 20, trainer=trainer)
    tok.save(str(path))


def _hf_model(kind, vocab=MODEL_VOCAB):
    torch.manual_seed(0)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2,
                                       state_size=4, expand=2, conv_kernel=4)
        return transformers.MambaForCausalLM(cfg).eval()
    cfg = transformers.Mamba2Config(vocab_size=vocab, hidden_size=16, num_hidden_layers=2,
                                    expand=2, head_dim=8, num_heads=4, state_size=8, n_groups=1,
                                    conv_kernel=4, chunk_size=8)
    return transformers.Mamba2ForCausalLM(cfg).eval()


def _save_hf(kind, directory, vocab=MODEL_VOCAB):
    hf = _hf_model(kind, vocab)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            # non-trivial norms, D and steps so every parameter and the state matter
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith(".D"):
                p.normal_()
    hf.save_pretrained(str(directory))
    _tokenizer_json(directory / "tokenizer.json")
    return hf


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


def _hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens, use_cache=False).logits


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_load_source_matches_transformers(kind, env):
    hf = _save_hf(kind, env / "hf")
    model, _, meta = load_source(env / "hf")
    tokens = torch.randint(0, MODEL_VOCAB, (2, 23))
    assert_close(_logits(model, tokens), _hf_logits(hf, tokens), name=f"{kind} logits")
    assert meta["tokenizer"]["kind"] == "hf"
    assert HFTokenizer.load(env / "hf").vocab_size == TOKENIZER_SIZE


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_init_from_train_eval_export(kind, env, capsys):
    _save_hf(kind, env / "hf")
    corpus = _write_corpus(env / "corpus")
    run, out = str(env / "run"), str(env / "export")
    code, stdout, err = _run(
        ["train", "--init-from", str(env / "hf"), "--out", run, "--quiet",
         f"--data.corpus={corpus}", "--data.seq_len=8", "--data.batch_size=2",
         "--train.policy=previous", "--train.steps=3", "--train.eval_batches=1",
         "--train.checkpoint_every=2", "--train.keep_last=0"], capsys)  # fmt: skip
    assert code == 0, err
    cfg = json.loads((env / "run" / "config.json").read_text())
    assert cfg["model"]["mixer"] == kind and cfg["model"]["vocab_size"] == MODEL_VOCAB
    assert cfg["data"]["tokenizer"] == f"hf:{env / 'hf'}"
    # eval: the run, and the untouched HF directory on the same corpus
    for source, extra in ((run, []), (str(env / "hf"), ["--corpus", str(corpus)])):
        code, stdout, err = _run(["eval", source, "--lengths", "8,16", "--n-tokens", "64",
                                  "--no-progress", "--device", "cpu", *extra], capsys)
        assert code == 0, err
    code, _, err = _run(["export", run, "--hf", out], capsys)
    assert code == 0, err
    ours, _, _ = load_model(run)
    cls = transformers.MambaForCausalLM if kind == "mamba" else transformers.Mamba2ForCausalLM
    hf = cls.from_pretrained(out, local_files_only=True).eval()
    tokens = torch.randint(0, MODEL_VOCAB, (2, 29))
    assert_close(_hf_logits(hf, tokens), _logits(ours, tokens), name="exported logits")
    assert HFTokenizer.load(out).vocab_size == TOKENIZER_SIZE
    code, stdout, err = _run(["generate", out, "-n", "4", "--prompt", "state"], capsys)
    assert code == 0 and stdout.startswith("state"), err


def test_init_from_resumes_exactly(env, capsys):
    """3 steps straight == 2 steps, then a resume for the third (checkpoint, not --init-from)."""
    _save_hf("mamba", env / "hf")
    corpus = _write_corpus(env / "corpus")
    common = ["--init-from", str(env / "hf"), "--quiet", f"--data.corpus={corpus}",
              "--data.seq_len=8", "--data.batch_size=2", "--train.policy=previous",
              "--train.eval_batches=1", "--train.checkpoint_every=2"]  # fmt: skip
    assert_resume_equals_straight(lambda args: _run(args, capsys), env, common)


def _llama_dir(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                  "architectures": ["LlamaForCausalLM"]}))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such run or checkpoint (nor Hugging Face directory)"),
        ("llama", "holds a 'llama' model"),
        ("contradiction", "--model.d_model=32 contradicts"),
        ("tokenizer-too-big", "the tokenizer has 290 ids but the model"),
        ("no-weights", "has no model.safetensors"),
    ],
)
def test_bad_init_from(case, message, env, capsys):
    corpus = _write_corpus(env / "corpus")
    hf = env / "hf"
    if case == "llama":
        _llama_dir(hf)
    elif case == "tokenizer-too-big":
        _save_hf("mamba", hf, vocab=280)
    elif case in ("contradiction", "no-weights"):
        _save_hf("mamba", hf)
        if case == "no-weights":
            os.remove(hf / "model.safetensors")
    extra = ["--model.d_model=32"] if case == "contradiction" else []
    out = env / "run"
    capsys.readouterr()
    code, _, err = _run(["train", "--init-from", str(hf), "--out", str(out), "--quiet",
                         f"--data.corpus={corpus}", "--data.seq_len=8", "--data.batch_size=2",
                         "--train.steps=1", *extra], capsys)  # fmt: skip
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_bad_source_for_eval_and_generate(command, env, capsys):
    for source, message in ((env / "nothing", "no such run or checkpoint"),
                            (_llama_dir(env / "llama"), "holds a 'llama' model")):  # fmt: skip
        capsys.readouterr()
        code, _, err = _run([command, str(source)], capsys)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1


def test_export_refuses_existing_and_non_mamba(env, capsys):
    run = env / "run"
    code, _, err = _run(["train", "--out", str(run), "--quiet", "--data.corpus=markov:1:8:0:3000",
                         "--model.mixer=s4d", "--model.d_model=8", "--model.n_layers=1",
                         "--data.seq_len=8", "--data.batch_size=2", "--train.steps=1",
                         "--train.eval_batches=1"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = _run(["export", str(run), "--hf", str(env / "out")], capsys)
    assert code == 2 and "only mamba and mamba2" in err
    assert not (env / "out").exists()
    (env / "taken").mkdir()
    (env / "taken" / "keep.txt").write_text("mine")
    code, _, err = _run(["export", str(run), "--hf", str(env / "taken")], capsys)
    assert code == 2 and "already exists" in err
    assert (env / "taken" / "keep.txt").read_text() == "mine"


def test_init_from_starts_from_the_weights(env, capsys):
    """With a vanishing learning rate the trained run still computes the HF model's logits."""
    hf = _save_hf("mamba2", env / "hf")
    corpus = _write_corpus(env / "corpus")
    code, _, err = _run(["train", "--init-from", str(env / "hf"), "--out", str(env / "run"),
                         "--quiet", f"--data.corpus={corpus}", "--data.seq_len=8",
                         "--data.batch_size=2", "--train.steps=1", "--train.lr=1e-30",
                         "--train.eval_batches=1", "--train.policy=passing"], capsys)  # fmt: skip
    assert code == 0, err
    tokens = torch.randint(0, MODEL_VOCAB, (2, 19))
    assert_close(_logits(load_model(env / "run")[0], tokens), _hf_logits(hf, tokens))


def test_extend_init_from_post_trains_both_policies(env, capsys):
    _save_hf("mamba", env / "hf")
    corpus = _write_corpus(env / "corpus")
    out = env / "ext"
    code, stdout, err = _run(["extend", "--init-from", str(env / "hf"), "--corpus", str(corpus),
                              "--quick", "--policies", "passing,previous", "--seq-len", "8",
                              "--steps", "2", "--max-length", "32", "--n-tokens", "64", "--quiet",
                              "--data.tokens_per_step=32", "--train.eval_every=0",
                              "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary["runs"]] == ["passing", "previous"]
    for name in ("passing", "previous"):
        cfg = json.loads((out / "runs" / name / "config.json").read_text())
        assert cfg["train"]["init_from"] == str(env / "hf") and cfg["model"]["d_model"] == 16
