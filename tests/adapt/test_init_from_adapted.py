"""``train|extend --init-from RUN2``: an adapted run whose adapter is plain weights starts a run.

``lora:R`` merges into W′ = W + (α/R)·B·A (checked against a NumPy float64 merge and, for the whole
model, against the adapted model's own logits), ``full`` is its weights; the state methods and
prefix tuning are refused with one line, exit 2, nothing written, the source files unchanged.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import longssm.train.loop as train_loop
from longssm.adapt import STATE_METHODS, AdaptError, LoRALinear, attach, load_adapted, merge_adapter
from longssm.checkpoint import checkpoint_dirs, load_model
from longssm.cli import main
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.adapters import merged_linear

TINY = ["--model.d_model=16", "--model.n_layers=2", "--model.d_state=4", "--model.mixer=mamba",
        "--model.d_conv=4", "--data.seq_len=16", "--data.batch_size=4", "--train.eval_batches=1",
        "--quiet", "--train.dtype=float64"]  # fmt: skip
BASE_CORPUS, TARGET = "markov:1:8:0:20000", "markov:1:8:1:20000"
REFUSED = [*STATE_METHODS, "prefix:2"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digests(*roots):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["train", "--out", str(tmp_path / "base"),
                            f"--data.corpus={BASE_CORPUS}", "--train.steps=3", *TINY], capsys)
    assert code == 0, err
    return tmp_path


def adapt(base, capsys, method):
    out = base / method.replace(":", "")
    lr = ["--lr", "1e-3"] if method == "full" else ["--lr", "0.05"]
    code, _, err = run_cli(["adapt", str(base / "base"), "--method", method, "--corpus", TARGET,
                            "--steps", "3", "--out", str(out), "--eval-windows", "2",
                            "--batch-size", "4", "--quiet", *lr], capsys)  # fmt: skip
    assert code == 0, err
    return out


# ---- the merge, in the library --------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_merged_linear_equals_a_numpy_merge(bias):
    torch.manual_seed(0)
    lora = LoRALinear(torch.nn.Linear(7, 5, bias=bias).double(), rank=3, alpha=1.5)
    with torch.no_grad():
        lora.lora_B.normal_()
    merged = merged_linear(lora)
    W, A, B = (t.detach().numpy() for t in (lora.base.weight, lora.lora_A, lora.lora_B))
    want = W + (1.5 / 3) * B @ A  # NumPy float64
    assert type(merged) is torch.nn.Linear
    np.testing.assert_allclose(merged.weight.detach().numpy(), want, rtol=0, atol=1e-15)
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    assert (merged(x) - lora(x)).abs().max() < 1e-12
    assert (merged.bias is None) == (not bias)


@pytest.mark.parametrize("mixer, options", [("mamba", {}), ("mamba2", {"headdim": 8, "chunk_size": 4})])
def test_merged_model_equals_the_lora_model_float64(mixer, options):
    torch.manual_seed(1)
    cfg = ModelConfig(mixer=mixer, vocab_size=11, d_model=16, n_layers=2, d_state=4, d_conv=4,
                      mixer_options=options)  # fmt: skip
    model = SSMLanguageModel(cfg).double()
    attach(model, "lora:2:3")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.3)
    tokens = torch.randint(0, 11, (3, 17))
    adapted, adapted_state = model(tokens)
    merge_adapter(model)
    merged, merged_state = model(tokens)
    assert not torch.equal(adapted, SSMLanguageModel(cfg).double()(tokens)[0])
    assert (merged - adapted).abs().max() < 1e-12
    for s, t in zip(merged_state, adapted_state):
        for a, b in zip(s, t):
            assert (a - b).abs().max() < 1e-12
    # a plain model of the base architecture: its names and shapes, every parameter trainable
    plain = SSMLanguageModel(cfg).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in plain.items()}
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_zero_lora_merges_to_bitwise_the_base_weights():
    cfg = ModelConfig(mixer="mamba", vocab_size=11, d_model=8, n_layers=1, d_state=4, d_conv=4)
    model = SSMLanguageModel(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attach(model, "lora:2")
    after = merge_adapter(model).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", REFUSED)
def test_state_methods_do_not_merge(method):
    cfg = ModelConfig(mixer="mamba", vocab_size=11, d_model=8, n_layers=1, d_state=4, d_conv=4)
    model = SSMLanguageModel(cfg)
    attach(model, method)
    with pytest.raises(AdaptError, match="not expressible as the base architecture's weights"):
        merge_adapter(model)


# ---- train / extend --init-from RUN2, end to end ------------------------------------------------


@pytest.mark.parametrize("method", ["lora:2", "full"])
def test_train_init_from_adapted_run_starts_from_its_logits(method, base, capsys, monkeypatch):
    adapted = adapt(base, capsys, method)
    before = digests(base / "base", adapted)
    tokens = torch.randint(0, 8, (2, 21))
    seen = {}
    real_build = train_loop.build_run

    def build_and_score(cfg, run_dir, resume, log):
        run = real_build(cfg, run_dir, resume, log)  # step 0, before any optimiser step
        with torch.no_grad():
            seen["logits"] = run.model(tokens)[0].clone()
        seen["lora"] = any(isinstance(m, LoRALinear) for m in run.model.modules())
        return run

    monkeypatch.setattr(train_loop, "build_run", build_and_score)
    out = base / "post"
    code, _, err = run_cli(["train", "--init-from", str(adapted), "--out", str(out),
                            f"--data.corpus={TARGET}", "--train.steps=2", *TINY], capsys)
    assert code == 0, err
    model, meta, _ = load_adapted(adapted)
    with torch.no_grad():
        expected = model(tokens)[0]
    base_only = load_model(base / "base")[0](tokens)[0]
    assert seen["logits"].dtype == expected.dtype == torch.float64 and not seen["lora"]
    assert not torch.equal(expected, base_only)  # the adapter moved the model
    if method == "full":
        assert torch.equal(seen["logits"], expected)
    else:
        assert (seen["logits"] - expected).abs().max() < 1e-12
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(adapted)
    assert cfg["model"] == load_model(base / "base")[2]["config"]["model"]
    assert load_model(out)[2]["step"] == 2
    assert digests(base / "base", adapted) == before


def test_extend_init_from_lora_adapted_run(base, capsys):
    adapted = adapt(base, capsys, "lora:2")
    before = digests(base / "base", adapted)
    out = base / "ext"
    code, _, err = run_cli(["extend", "--init-from", str(adapted), "--corpus", TARGET,
                            "--quick", "--policies", "zero,previous", "--seq-len", "16",
                            "--steps", "2", "--max-length", "64", "--n-tokens", "64", "--quiet",
                            "--data.tokens_per_step=32", "--train.eval_every=0",
                            "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary["runs"]] == ["zero", "previous"]
    base_model = load_model(base / "base")[2]["config"]["model"]
    for name in ("zero", "previous"):
        cfg = json.loads((out / "runs" / name / "config.json").read_text())
        assert cfg["train"]["init_from"] == str(adapted) and cfg["model"] == base_model
        assert load_model(out / "runs" / name)[2]["step"] == 2
    assert digests(base / "base", adapted) == before


def _refused(base, capsys, command, source, out):
    if command == "train":
        args = ["train", "--init-from", str(source), "--out", str(out),
                f"--data.corpus={TARGET}", "--train.steps=1", *TINY]  # fmt: skip
    else:
        args = ["extend", "--init-from", str(source), "--corpus", TARGET, "--steps", "2",
                "--seq-len", "16", "--max-length", "32", "--n-tokens", "64", "--policies",
                "zero", "--out", str(out), "--quiet"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.startswith("longssm: error:") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command, method", [*(("train", m) for m in REFUSED),
                                             ("extend", "state-offset-h")])
def test_state_adapted_run_is_refused_one_line(command, method, base, capsys):
    adapted = adapt(base, capsys, method)
    before = digests(base / "base", adapted)
    out = base / "post"
    err = _refused(base, capsys, command, adapted, out)
    assert f"adapted with {method}" in err and "not expressible" in err
    assert f"longssm eval {adapted}" in err
    assert not out.exists()
    assert digests(base / "base", adapted) == before


def test_lora_run_on_a_changed_base_is_refused(base, capsys):
    adapted = adapt(base, capsys, "lora:2")
    weights = checkpoint_dirs(base / "base")[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = base / "post"
    assert "SHA-256 differs" in _refused(base, capsys, "train", adapted, out)
    assert not out.exists()


def test_init_from_adapted_records_and_hashes_once(base, capsys, monkeypatch):
    """``mergeable_base`` is reached from the config, the tokenizer and the weights; the base's
    weights file is hashed once, and the new run records both files it read with their SHA-256."""
    import os
    from collections import Counter, OrderedDict

    import longssm.checkpoint as ckpt_io

    adapted = adapt(base, capsys, "lora:2")
    calls: Counter = Counter()
    real = ckpt_io._hash_file
    monkeypatch.setattr(ckpt_io, "_hash_file",
                        lambda p: calls.update([os.path.realpath(p)]) or real(p))
    monkeypatch.setattr(ckpt_io, "_SHA_CACHE", OrderedDict())
    monkeypatch.setattr(ckpt_io, "SHA_CACHE_MIN_AGE_S", 0.0)
    out = base / "post"
    code, _, err = run_cli(["train", "--init-from", str(adapted), "--out", str(out),
                            f"--data.corpus={TARGET}", "--train.steps=1", *TINY], capsys)
    assert code == 0, err
    base_weights = (checkpoint_dirs(base / "base")[-1] / "model.safetensors").resolve()
    assert calls[str(base_weights)] == 1, calls
    record = json.loads((checkpoint_dirs(out)[-1] / "meta.json").read_text())["init_source"]
    assert record["kind"] == "adapter" and record["checkpoint"] == str(adapted.resolve())
    assert record["base"] == str(base_weights.parent) and record["step"] == 3
    tensors = (adapted / "adapter.safetensors").resolve()
    assert record["sha256"] == {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (tensors, base_weights)}
