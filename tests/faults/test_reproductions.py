"""Issue 18, one test per reproduction: each failed before the fix (see the module's notes).

Fast: a tiny markov run trains 2-3 steps in about a second. The slow fault suite is
``test_faults_slow.py`` (``-m slow``).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from longssm import checkpoint as ckpt_io

from .common import (
    TINY,
    checkpoints,
    cli,
    flip_last_byte,
    one_error_line,
    snapshot,
    train_tiny,
    weights,
)


@pytest.fixture
def run2(tmp_path, capsys):
    """A finished 2-step run with checkpoints at steps 1 and 2."""
    out = tmp_path / "run"
    train_tiny(out, capsys, steps=2, every=1)
    return out


def _edit_meta(ckpt, edit):
    """Edit meta.json and re-seal it (a checksum-aware forger): the schema must still refuse it."""
    meta = json.loads((ckpt / "meta.json").read_text())
    edit(meta)
    meta["meta_sha256"] = ckpt_io.meta_digest(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def _rehash(ckpt, name):
    _edit_meta(ckpt, lambda m: m["files"].update({name: ckpt_io.file_sha256(ckpt / name)}))


# 1. corrupted weights load silently


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_flipped_weight_byte_is_refused_on_load(run2, tmp_path, capsys, command):
    flip_last_byte(checkpoints(run2)[-1] / "model.safetensors")
    args = ([command, run2, "--out", tmp_path / "ev", "--lengths", "8:16", "--n-tokens", "64",
             "--no-progress", "--device", "cpu"] if command == "eval" else
            [command, run2, "-n", "3"])  # fmt: skip
    code, _, err = cli(args, capsys)
    assert code == 2
    assert "model.safetensors is damaged" in one_error_line(err)


def test_resume_falls_back_from_a_damaged_checkpoint_in_one_line(run2, capsys):
    ref = weights(checkpoints(run2)[-1])
    flip_last_byte(checkpoints(run2)[-1] / "model.safetensors")
    code, out, err = cli(["train", "--out", run2, "--resume", "--quiet"], capsys)
    assert code == 0, err
    fallback = [line for line in out.splitlines() if "skipping damaged" in line]
    assert len(fallback) == 1 and "resuming from ckpt-00000001" in fallback[0]
    # retrained from step 1: the rewritten step-2 checkpoint is the reference bit for bit
    again = weights(checkpoints(run2)[-1])
    assert all(torch.equal(ref[k], again[k]) for k in ref)


def test_missing_meta_is_an_error_not_a_silent_older_checkpoint(run2, tmp_path, capsys):
    (checkpoints(run2)[-1] / "meta.json").unlink()
    code, _, err = cli(["generate", run2, "-n", "3"], capsys)
    assert code == 2 and "ckpt-00000002 has no meta.json" in one_error_line(err)
    code, out, err = cli(["train", "--out", run2, "--resume", "--quiet"], capsys)
    assert code == 0 and "skipping damaged checkpoint(s) ckpt-00000002" in out


def test_edited_step_in_meta_is_refused(run2, capsys):
    _edit_meta(checkpoints(run2)[0], lambda m: m.update(step=7))
    code, _, err = cli(["generate", checkpoints(run2)[0], "-n", "3"], capsys)
    assert code == 2 and "'step' is 7 but the directory is ckpt-00000001" in one_error_line(err)


# 2. a checkpoint can hold diverged weights


@pytest.mark.parametrize("override, name", [
    ("--train.lr=Infinity", "train.lr"), ("--train.noise_std=NaN", "train.noise_std"),
    ("--train.lr=1e400", "train.lr"), ("--train.lr=1e300", "train.lr"),
])  # fmt: skip
def test_non_finite_numbers_fail_validation(tmp_path, capsys, override, name):
    code, _, err = cli(["train", "--out", tmp_path / "r", "--quiet", *TINY, override], capsys)
    assert code == 2 and name in one_error_line(err)
    assert not (tmp_path / "r").exists()


def test_divergence_never_writes_a_checkpoint_and_names_step_and_module(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = cli(["train", "--out", out, "--quiet", *TINY, "--train.steps=4",
                        "--train.checkpoint_every=1", "--train.lr=3e38",
                        "--train.warmup_steps=0"], capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "training diverged at step" in line and "last good checkpoint:" in line
    for ckpt in checkpoints(out) if (out / "checkpoints").exists() else []:
        for name in ("model", "optimizer", "extra"):
            tensors = ckpt_io.read_tensors(ckpt, name)
            assert ckpt_io.first_non_finite(tensors) is None, (ckpt, name)


def test_non_finite_parameter_at_step_1_writes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    _poison(monkeypatch, 1, grad=False)
    code, _, err = cli(["train", "--out", out, "--quiet", *TINY, "--train.steps=2",
                        "--train.checkpoint_every=1"], capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "training diverged at step 1: non-finite parameter in blocks.0.mixer" in line
    assert line.endswith("last good checkpoint: none written yet")
    assert not (out / "checkpoints").exists() or not checkpoints(out)


def _poison(monkeypatch, at_step: int, grad: bool):
    """From outside the library: a NaN in one parameter (or its gradient) at ``at_step``."""
    import longssm.train.loop as loop

    original = loop.accumulate_gradients

    def patched(model, policy, loader, carried, grad_accum, step, *args, **kwargs):
        result = original(model, policy, loader, carried, grad_accum, step, *args, **kwargs)
        if step + 1 == at_step:
            param = [p for n, p in model.named_parameters() if n.startswith("blocks.0.mixer.")][0]
            with torch.no_grad():
                (param.grad if grad else param).view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(loop, "accumulate_gradients", patched)


@pytest.mark.parametrize("grad", [True, False], ids=["gradient", "parameter"])
def test_non_finite_after_a_good_checkpoint_names_it(tmp_path, capsys, monkeypatch, grad):
    out = tmp_path / "r"
    _poison(monkeypatch, 3, grad)
    code, _, err = cli(["train", "--out", out, "--quiet", *TINY, "--train.steps=4",
                        "--train.checkpoint_every=1"], capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "at step 3: non-finite" in line and "in blocks.0.mixer (" in line
    assert line.endswith(str(out / "checkpoints" / "ckpt-00000002"))
    assert [p.name for p in checkpoints(out)] == ["ckpt-00000001", "ckpt-00000002"]


def test_save_refuses_non_finite_tensors(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(ckpt_io.NonFiniteCheckpointError, match="weight"):
        ckpt_io.save_checkpoint(tmp_path / "ckpt-00000001", model, {"config": {}, "step": 1})
    assert list(tmp_path.iterdir()) == []


# 3. stuck run folders


def test_run_without_checkpoint_restarts_under_resume(tmp_path, capsys):
    ref, out = tmp_path / "ref", tmp_path / "r"
    train_tiny(ref, capsys, steps=2, every=0)
    train_tiny(out, capsys, steps=2, every=0)
    # a kill before the first checkpoint: config.json, metrics, no checkpoint
    for ckpt in checkpoints(out):
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    code, stdout, err = cli(["train", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 0, err
    assert "starting it again from step 0" in stdout
    a, b = weights(checkpoints(ref)[-1]), weights(checkpoints(out)[-1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diverged_at_step_1_can_be_resumed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    _poison(monkeypatch, 1, grad=False)
    args = ["train", "--out", out, "--quiet", *TINY, "--train.steps=2"]
    assert cli(args, capsys)[0] == 2
    monkeypatch.undo()
    code, _, err = cli([*args, "--resume"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("override, message", [
    ("--train.policy=passing", "train.policy=passing needs at least 2 streams"),
    ("--data.max_tokens=12", "split has"),
])  # fmt: skip
def test_errors_before_the_first_step_leave_no_run_folder(tmp_path, capsys, override, message):
    out = tmp_path / "r"
    extra = ["--data.batch_size=1"] if "passing" in override else []
    code, _, err = cli(["train", "--out", out, "--quiet", *TINY, *extra, override], capsys)
    assert code == 2 and message in one_error_line(err)
    assert not out.exists()


# 4. no lock


def test_second_process_on_one_run_folder_fails_at_once(tmp_path, capsys):
    from longssm.train.run import RunLock

    out = tmp_path / "r"
    lock = RunLock(out)
    lock.acquire()
    try:
        code, _, err = cli(["train", "--out", out, "--quiet", *TINY], capsys)
    finally:
        lock.release()
    assert code == 2 and "in use by another longssm process" in one_error_line(err)
    assert not (out / "config.json").exists()


# 5. tracebacks instead of one line


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = cli(["train", "--out", tmp_path / "f", "--quiet", *TINY], capsys)
    assert code == 2 and "not a folder" in one_error_line(err)
    assert (tmp_path / "f").read_text() == "x"


def test_full_disk_during_a_save(run2, capsys, monkeypatch):
    import errno

    import longssm.checkpoint as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = snapshot(run2 / "checkpoints")
    monkeypatch.setattr(module, "save_model", full)
    code, _, err = cli(["train", "--out", run2, "--resume", "--quiet", "--train.steps=3"], capsys)
    assert code == 2 and "No space left on device" in one_error_line(err)
    assert snapshot(run2 / "checkpoints") == before  # no .ckpt-* left, old ones intact


def test_safetensors_error_is_one_line(run2, capsys, monkeypatch):
    from safetensors import SafetensorError

    import longssm.checkpoint as module

    def fail(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(module, "save_file", fail)
    code, _, err = cli(["train", "--out", run2, "--resume", "--quiet", "--train.steps=3"], capsys)
    assert code == 2 and "No space left on device" in one_error_line(err)


@pytest.mark.parametrize("args, message", [
    (["--model.d_model=17179869184"], "does not fit in memory"),
    (["--train.device=cuda"] if not torch.cuda.is_available() else ["--train.dtype=x"],
     "cuda" if not torch.cuda.is_available() else "train.dtype"),
    (["--train.dtype=bogus"], "train.dtype must be float32 or float64"),
])  # fmt: skip
def test_train_failures_are_one_line(tmp_path, capsys, args, message):
    code, _, err = cli(["train", "--out", tmp_path / "r", "--quiet", *TINY, *args], capsys)
    assert code == 2 and message in one_error_line(err)


def test_yaml_top_level_list(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("- a\n- b\n")
    code, _, err = cli(["train", tmp_path / "c.yaml", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "top level must be a mapping" in one_error_line(err)


@pytest.mark.parametrize("key", ["optimizer", "loader", "tokenizer"])
def test_meta_missing_a_resume_key(tmp_path, capsys, key):
    out = tmp_path / "r"
    train_tiny(out, capsys, steps=1, every=1)
    _edit_meta(checkpoints(out)[-1], lambda m: m.pop(key))
    code, _, err = cli(["train", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 2 and f"missing {key!r}" in one_error_line(err)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"]["train"].update(dtype="bogus"), "config.train.dtype"),
    (lambda m: m.update(tokenizer={"kind": "bpe", "json": "{garbage"}), "damaged tokenizer"),
])  # fmt: skip
def test_bad_meta_on_generate(run2, capsys, edit, message):
    _edit_meta(checkpoints(run2)[-1], edit)
    code, _, err = cli(["generate", run2, "-n", "3"], capsys)
    assert code == 2 and message in one_error_line(err)


@pytest.mark.parametrize("name", ["rng", "optimizer"])
def test_wrong_sized_tensors_in_a_resume(run2, capsys, name):
    ckpt = checkpoints(run2)[-1]
    if name == "rng":
        path = ckpt / "extra.safetensors"
        tensors = ckpt_io.read_tensors(ckpt, "extra")
        tensors["rng.torch"] = tensors["rng.torch"][:100].clone()
    else:
        path = ckpt / "optimizer.safetensors"
        tensors = ckpt_io.read_tensors(ckpt, "optimizer")
        key = next(k for k in tensors if k.endswith("exp_avg"))
        tensors[key] = torch.zeros(3, 5)
    save_file(tensors, str(path))
    _rehash(ckpt, path.name)
    code, _, err = cli(["train", "--out", run2, "--resume", "--quiet", "--train.steps=3"], capsys)
    assert code == 2 and "does not fit" in one_error_line(err)


@pytest.mark.parametrize("temperature", ["nan", "1e-45", "inf"])
def test_generate_bad_temperature(run2, capsys, temperature):
    code, _, err = cli(["generate", run2, "-n", "3", "--temperature", temperature], capsys)
    assert code == 2 and "--temperature" in one_error_line(err)


def test_unexpected_error_is_one_line_with_a_debug_hint(capsys, monkeypatch):
    import longssm.cli as cli_module

    def boom(args, overrides):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli_module, "_run_corpus", boom)
    code, _, err = cli(["corpus"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "run with --debug for the traceback" in lines[0]
    with pytest.raises(ZeroDivisionError):
        cli(["corpus", "--debug"], capsys)


def test_argparse_errors_are_one_line(capsys):
    code, _, err = cli(["generate", "x", "-n", "abc"], capsys)
    assert code == 2 and "invalid int value" in one_error_line(err)


# 6. errors found late; 7. silent surprises


@pytest.mark.parametrize("option", ["--n-tokens", "--steps", "--seq-len", "--max-length"])
def test_extend_zero_is_a_value(tmp_path, capsys, option):
    out = tmp_path / "x"
    code, _, err = cli(["extend", "--quick", "--corpus", "markov:1:8:0:5000", "--out", out,
                        option, "0", "--quiet"], capsys)  # fmt: skip
    assert code == 2 and one_error_line(err)
    assert not out.exists()


def test_extend_length_check_before_training(tmp_path, capsys):
    out = tmp_path / "x"
    code, _, err = cli(["extend", "--quick", "--corpus", "markov:1:8:0:5000", "--out", out,
                        "--seq-len", "64", "--max-length", "64", "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "--max-length" in one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "extend"])
def test_empty_out_is_refused(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    extra = TINY if command == "train" else ["--quick", "--corpus", "markov:1:8:0:5000"]
    code, _, err = cli([command, "--out", "", "--quiet", *extra], capsys)
    assert code == 2 and "--out" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"] or not any(
        p.name in ("runs", "results") for p in tmp_path.iterdir()
    )


def test_eval_name_cannot_leave_out(run2, tmp_path, capsys):
    code, _, err = cli(["eval", run2, "--out", tmp_path / "ev", "--name", "../..", "--lengths",
                        "8:16", "--n-tokens", "64", "--no-progress"], capsys)  # fmt: skip
    assert code == 2 and "--name" in one_error_line(err)
    assert not (tmp_path / "ev").exists()


def test_bare_resume_with_an_override_takes_the_checkpoint_config(tmp_path, capsys):
    out = tmp_path / "r"
    train_tiny(out, capsys, steps=2, every=1)
    code, stdout, err = cli(["train", "--out", out, "--resume", "--quiet", "--train.threads=1",
                             "--train.steps=3"], capsys)  # fmt: skip
    assert code == 0, err
    assert "done: 3 steps" in stdout


def test_no_duplicate_diagnostics_rows_after_resume(run2, capsys):
    # resume from step 1 (the step-2 checkpoint is damaged): steps 2 is recorded again
    flip_last_byte(checkpoints(run2)[-1] / "model.safetensors")
    assert cli(["train", "--out", run2, "--resume", "--quiet", "--train.steps=3"], capsys)[0] == 0
    steps = [json.loads(line)["step"] for line in (run2 / "diagnostics.jsonl").open()]
    assert steps == [1, 2, 3]
    rows = (run2 / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]


def test_stale_temporary_folders_are_cleaned(run2, capsys):
    stale = run2 / "checkpoints" / ".ckpt-00000003.abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert cli(["train", "--out", run2, "--resume", "--quiet", "--train.steps=3"], capsys)[0] == 0
    assert not stale.exists()
    assert [p.name for p in (run2 / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_edited_meta_without_resealing_is_damaged(run2, capsys):
    path = checkpoints(run2)[-1] / "meta.json"
    path.write_text(path.read_text().replace('"lr": 0.003', '"lr": 0.004'))
    code, _, err = cli(["generate", run2, "-n", "3"], capsys)
    assert code == 2 and "meta.json is damaged" in one_error_line(err)


def test_checksums_are_stored(run2):
    meta = ckpt_io.read_meta(checkpoints(run2)[-1])
    assert set(meta["files"]) == {"model.safetensors", "optimizer.safetensors", "extra.safetensors"}
    for name, digest in meta["files"].items():
        assert ckpt_io.file_sha256(checkpoints(run2)[-1] / name) == digest
    assert os.path.exists(run2 / ".lock")
