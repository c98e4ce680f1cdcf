"""``longssm adapt`` / ``longssm prune`` end to end on a tiny run: files, reload, bad input."""

import json
import os

import pytest
import torch

from longssm.adapt import AdaptError, load_adapted, read_adapter
from longssm.checkpoint import load_model
from longssm.cli import main

TINY = ["--model.d_model=16", "--model.n_layers=2", "--model.d_state=4", "--model.mixer=mamba",
        "--model.d_conv=4", "--data.seq_len=16", "--data.batch_size=4", "--train.steps=3",
        "--train.eval_batches=1", "--train.log_every=1", "--quiet"]
BASE_CORPUS, TARGET = "markov:1:8:0:20000", "markov:1:8:1:20000"


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "base")
    assert run_cli(["train", "--out", out, f"--data.corpus={BASE_CORPUS}", *TINY], capsys)[0] == 0
    return tmp_path


def test_adapt_saves_small_adapter_and_reloads(base, capsys):
    out = base / "adapted"
    code, stdout, err = run_cli(["adapt", str(base / "base"), "--method", "state-offset-h",
                                 "--corpus", TARGET, "--steps", "3", "--out", str(out),
                                 "--eval-windows", "4", "--batch-size", "4", "--quiet"], capsys)
    assert code == 0, err
    assert "256 trainable parameters" in stdout  # 2 layers x d_inner 32 x d_state 4
    meta, tensors = read_adapter(out)
    assert meta["method"] == "state-offset-h" and meta["trainable_parameters"] == 256
    assert set(tensors) == {"blocks.0.h_offset", "blocks.1.h_offset"}
    assert meta["shapes"]["blocks.0.h_offset"] == [32, 4] and len(meta["base_sha256"]) == 64
    assert os.path.getsize(out / "adapter.safetensors") < 4096
    model, _, _ = load_adapted(out)
    assert torch.equal(model.blocks[1].mixer.h_offset, tensors["blocks.1.h_offset"])
    assert tensors["blocks.0.h_offset"].abs().sum() > 0  # it trained
    base_model, _, _ = load_model(base / "base")
    x = torch.randint(0, 8, (2, 12))
    assert not torch.equal(model(x)[0], base_model(x)[0])
    # nothing is overwritten: the same --out again is one line, exit 2
    before = (out / "adapter.safetensors").read_bytes()
    code, _, err = run_cli(["adapt", str(base / "base"), "--method", "initial-state", "--corpus",
                            TARGET, "--steps", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert (out / "adapter.safetensors").read_bytes() == before


def test_adapter_on_another_shape_is_refused(base, capsys):
    out = base / "adapted"
    assert run_cli(["adapt", str(base / "base"), "--method", "initial-state", "--corpus", TARGET,
                    "--steps", "1", "--out", str(out), "--eval-windows", "2", "--quiet"],
                   capsys)[0] == 0
    other = str(base / "other")
    assert run_cli(["train", "--out", other, f"--data.corpus={BASE_CORPUS}", *TINY,
                    "--model.d_state=8"], capsys)[0] == 0
    with pytest.raises(AdaptError, match="has shape"):
        load_adapted(out, base=other)
    same_shape = str(base / "retrained")
    assert run_cli(["train", "--out", same_shape, f"--data.corpus={BASE_CORPUS}", *TINY,
                    "--train.seed=5"], capsys)[0] == 0
    with pytest.raises(AdaptError, match="SHA-256"):
        load_adapted(out, base=same_shape)


@pytest.mark.parametrize("method", ["wanda", "dstate-taylor2"])
def test_prune_writes_a_loadable_smaller_run(base, capsys, method):
    out = base / "pruned"
    code, stdout, err = run_cli(["prune", str(base / "base"), "--method", method, "--ratio", "0.5",
                                 "--calibration", "4", "--eval-windows", "4", "--out", str(out)],
                                capsys)
    assert code == 0, err
    assert "before" in stdout and "tokens/s" in stdout
    report = json.loads((out / "prune.json").read_text())
    model, _, meta = load_model(out)
    if method == "wanda":
        assert report["after"]["nonzero"] < report["before"]["nonzero"]
        assert report["after"]["parameters"] == report["before"]["parameters"]
    else:
        assert model.cfg.d_state == 2 and meta["pruned"]["d_state"] == [4, 2]
        assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["loss_low"] <= report["after"]["loss"] <= report["after"]["loss_high"]


def test_prune_heads_writes_a_smaller_mamba2_run_that_eval_reads(base, capsys):
    tiny = [a for a in TINY if not a.startswith("--model.mixer=")]
    run = base / "m2"
    assert run_cli(["train", "--out", str(run), f"--data.corpus={BASE_CORPUS}", *tiny,
                    "--model.mixer=mamba2", "--model.mixer_options.headdim=8",
                    "--model.mixer_options.chunk_size=8"], capsys)[0] == 0
    out = base / "m2-heads"
    code, stdout, err = run_cli(["prune", str(run), "--method", "heads", "--ratio", "0.5",
                                 "--calibration", "4", "--eval-windows", "4", "--out", str(out)],
                                capsys)
    assert code == 0, err
    report = json.loads((out / "prune.json").read_text())
    assert report["heads"] == [4, 2] and report["d_inner"] == [32, 16]
    assert report["after"]["parameters"] < report["before"]["parameters"]
    model, _, meta = load_model(out)
    assert model.cfg.d_inner == 16 and meta["config"]["model"]["mixer_options"]["d_inner"] == 16
    assert model.blocks[0].mixer.nheads == 2
    code, _, err = run_cli(["eval", str(out), "--lengths", "16,32", "--n-tokens", "64",
                            "--device", "cpu", "--no-progress", "--out", str(base / "ev")],
                           capsys)
    assert code == 0, err


@pytest.mark.parametrize("args,message", [
    (["prune", "{base}", "--method", "wanda", "--ratio", "1.0", "--out", "{out}"], "[0, 1)"),
    (["prune", "{base}", "--method", "bogus", "--ratio", "0.5", "--out", "{out}"], "unknown pruning"),
    (["prune", "{base}", "--method", "heads", "--ratio", "0.5", "--out", "{out}"], "mamba2 models only"),
    (["prune", "{base}", "--method", "heads", "--ratio", "1.5", "--out", "{out}"], "[0, 1)"),
    (["adapt", "{base}", "--method", "prefix", "--corpus", TARGET, "--out", "{out}"],
     "unknown adaptation method"),
    (["adapt", "{base}", "--method", "prefix:x", "--corpus", TARGET, "--out", "{out}"],
     "expected prefix:K"),
    (["adapt", "{base}", "--method", "prefix:0", "--corpus", TARGET, "--out", "{out}"],
     "K >= 1"),
    (["adapt", "{base}/missing", "--method", "initial-state", "--corpus", TARGET, "--out", "{out}"],
     "no such run"),
    (["adapt", "{base}", "--method", "initial-state", "--corpus", TARGET, "--steps", "0",
      "--out", "{out}"], "steps must be >= 1"),
])
def test_bad_input_one_line_exit_2(base, capsys, args, message):
    out = base / "new"
    args = [a.format(base=base / "base", out=out) for a in args]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.startswith("longssm: error:") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def _adapt(base, capsys, method="state-offset-h", name="adapted"):
    out = base / name
    lr = ["--lr", "1e-3"] if method == "full" else []
    code, _, err = run_cli(["adapt", str(base / "base"), "--method", method, "--corpus", TARGET,
                            "--steps", "3", "--out", str(out), "--eval-windows", "2",
                            "--batch-size", "4", "--quiet", *lr], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("method", ["state-offset-h", "lora:2", "prefix:3", "full"])
def test_eval_and_generate_read_an_adapted_run(base, capsys, method):
    from longssm.eval.evaluate import load_split
    from longssm.eval.lengths import evaluate_lengths

    out = _adapt(base, capsys, method)
    args = ["--corpus", TARGET, "--lengths", "16,32", "--n-tokens", "128", "--batch-size", "4",
            "--device", "cpu", "--no-progress", "--name", "r"]
    code, _, err = run_cli(["eval", str(out), "--out", str(base / "ev2"), *args], capsys)
    assert code == 0, err
    got = json.loads((base / "ev2" / "r.json").read_text())["records"]
    # the same numbers from Python: load_adapted + evaluate_lengths on the same split
    model, _, base_meta = load_adapted(out)
    base_meta["config"]["data"]["corpus"] = TARGET
    tokens, _ = load_split(base_meta, "test")
    want = evaluate_lengths(model, tokens, [16, 32], "reset", n_tokens=128, batch_size=4,
                            progress=False)
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6, abs=0)
    # ... and not the base model's numbers: the adapter is on
    assert run_cli(["eval", str(base / "base"), "--out", str(base / "ev1"), *args], capsys)[0] == 0
    plain = json.loads((base / "ev1" / "r.json").read_text())["records"]
    assert [r["loss"] for r in plain] != [r["loss"] for r in got]
    # the adapted run's own corpus is the one it was adapted to
    from longssm.interop.pretrained import load_source

    _, where, meta = load_source(out)
    assert where == out and meta["config"]["data"]["corpus"] == TARGET
    assert meta["adapter"]["method"] == method
    code, stdout, err = run_cli(["generate", str(out), "--prompt", "1 2 3", "-n", "5",
                                 "--device", "cpu"], capsys)
    assert code == 0, err
    assert len(stdout.split()) == 8 and all(0 <= int(t) < 8 for t in stdout.split())


def test_adapter_whose_base_changed_is_one_line_exit_2(base, capsys):
    import shutil

    out = _adapt(base, capsys, "initial-state")
    ckpt = read_adapter(out)[0]["base"]
    retrained = base / "retrained"
    assert run_cli(["train", "--out", str(retrained), f"--data.corpus={BASE_CORPUS}", *TINY,
                    "--train.seed=5"], capsys)[0] == 0
    shutil.rmtree(ckpt)
    shutil.copytree(load_model(retrained)[1], ckpt)  # the base checkpoint changed in place
    for command in (["eval", str(out), "--lengths", "16", "--n-tokens", "64", "--no-progress",
                     "--device", "cpu"], ["generate", str(out), "--prompt", "1", "-n", "2"]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and err.startswith("longssm: error:") and err.count("\n") == 1, err
        assert "SHA-256 differs" in err
    assert not (out / "eval").exists()


def test_eval_reduce_keep_one_is_plain_and_beyond_keeps_the_prefix(base, capsys):
    run = str(base / "base")
    common = ["--lengths", "32,48", "--n-tokens", "96", "--device", "cpu", "--no-progress"]
    code, stdout, err = run_cli(["eval", run, "--reduce", "hybrid:1", *common], capsys)
    assert code == 0, err
    report = json.loads((base / "base" / "eval" / "reduce-hybrid-1.json").read_text())
    for r in report["records"]:
        assert r["kept_positions"] == r["length"]
        assert r["reduced"]["loss"] == r["plain"]["loss"] == r["plain_at_kept"]["loss"]
        assert r["increase"] == 0
    code, stdout, err = run_cli(["eval", run, "--reduce", "evit:0.5:0,1", "--reduce-beyond", "16",
                                 *common], capsys)
    assert code == 0, err
    path = base / "base" / "eval" / "reduce-evit-0.5.json"
    report = json.loads(path.read_text())
    assert [r["kept_positions"] for r in report["records"]] == [16 + 4, 16 + 8]  # halved twice past 16
    assert report["records"][0]["increase_low"] <= report["records"][0]["increase"]
    # the same again: one line, exit 2, the file untouched
    before = path.read_bytes()
    code, _, err = run_cli(["eval", run, "--reduce", "evit:0.5:0,1", "--reduce-beyond", "16",
                            *common], capsys)
    assert code == 2 and err.count("\n") == 1 and "exists" in err
    assert path.read_bytes() == before


def test_eval_reduce_keep_one_equals_the_plain_eval_records(base, capsys):
    """Same windows as ``longssm eval`` (reset), run in chunks of 16 with the state carried."""
    from longssm.adapt.reduce_eval import reset_starts
    from longssm.eval.evaluate import load_split
    from longssm.eval.lengths import make_plans

    run = str(base / "base")
    common = ["--lengths", "16,48", "--n-tokens", "200", "--batch-size", "3", "--chunk-size",
              "16", "--device", "cpu", "--no-progress", "--out", str(base / "ev")]
    assert run_cli(["eval", run, "--name", "plain", *common], capsys)[0] == 0
    assert run_cli(["eval", run, "--reduce", "tome:1", "--name", "red", *common], capsys)[0] == 0
    plain = json.loads((base / "ev" / "plain.json").read_text())["records"]
    red = json.loads((base / "ev" / "red.json").read_text())["records"]
    for p, r in zip(plain, red):
        assert r["length"] == p["length"] and r["start"] == p["start"] == 48
        assert r["plain"]["n_windows"] == p["n_windows"] and r["kept_positions"] == p["length"]
        assert r["reduced"]["loss"] == pytest.approx(p["loss"], rel=1e-6, abs=0)
        assert r["plain"]["loss"] == pytest.approx(p["loss"], rel=1e-6, abs=0)
    # the restated window rule is eval's own
    _, meta = load_model(base / "base")[1:]
    tokens, _ = load_split(meta, "test")
    for L in (16, 48, 7):
        plan = make_plans(tokens, [L], ["reset"], 200, 3, start=48)[0]
        want = [plan.window_start(row, j) for row in range(plan.rows)
                for j in range(plan.windows_per_row)]
        assert reset_starts(len(tokens), L, 200, 3, 48).tolist() == want


@pytest.mark.parametrize("spec,message", [("bogus:0.5", "unknown reduction method"),
                                          ("evit:1.5", "(0, 1]"), ("evit", "METHOD:KEEP"),
                                          ("evit:0.5:7", "outside")])
def test_eval_reduce_bad_input(base, capsys, spec, message):
    code, _, err = run_cli(["eval", str(base / "base"), "--reduce", spec, "--lengths", "32",
                            "--n-tokens", "64", "--device", "cpu", "--no-progress"], capsys)
    assert code == 2 and err.startswith("longssm: error:") and err.count("\n") == 1, err
    assert message in err
    assert not (base / "base" / "eval").exists()


def test_extend_init_from_a_state_adapted_run_is_one_line_exit_2(base, capsys):
    """``extend --init-from`` takes a LoRA/full adapted run (merged; tests/adapt/
    test_init_from_adapted.py); a state-method one is not plain weights: refused, nothing written."""
    adapted = _adapt(base, capsys, "state-offset-y")
    out = base / "ex"
    code, _, err = run_cli(["extend", "--init-from", str(adapted), "--steps", "2", "--seq-len",
                            "16", "--max-length", "32", "--n-tokens", "64", "--policies",
                            "zero", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and err.startswith("longssm: error:") and err.count("\n") == 1, err
    assert "adapted with state-offset-y" in err and "not expressible" in err
    assert not out.exists()
