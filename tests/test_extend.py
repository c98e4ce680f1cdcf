"""`longssm extend`: the whole experiment end to end on a tiny model and a synthetic corpus."""

import json

import pytest

from longssm.cli import main
from longssm.eval.classify import KINDS, classify_records
from longssm.eval.lengths import power_lengths
from longssm.eval.results import load_results, records_of
from longssm.extend import PRESETS, parse_int_list

TINY = [
    "--corpus", "markov:1:12:0:40000", "--steps", "6", "--max-length", "64", "--n-tokens", "256",
    "--quiet", "--quick", "--model.d_model=16", "--model.d_state=4", "--model.n_layers=1",
    "--data.tokens_per_step=256", "--train.eval_every=0", "--train.warmup_steps=1",
]


def test_extend_writes_results_report_and_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ext"
    assert main(["extend", *TINY, "--seq-len", "16", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary["runs"]] == ["zero", "previous"]
    assert summary["lengths"] == [16, 32, 64]
    results = json.loads((out / "results" / "previous.json").read_text())
    for run in summary["runs"]:
        assert set(run["loss"]) == {"reset", "stream", "shuffled"}
        assert len(run["loss"]["reset"]) == 3
        saved = load_results(out / "results" / f"{run['name']}.json")
        for protocol, verdict in run["extension"].items():
            # the verdict is the classifier's on the saved records (recomputed here)
            again = classify_records(records_of(saved, protocol), min_length=16)
            assert verdict == again.to_dict() and verdict["kind"] in KINDS and verdict["l0"] == 16
            assert verdict["change_low"] <= verdict["change"] <= verdict["change_high"]
    for r in results["records"]:
        assert r["loss_low"] <= r["loss"] <= r["loss_high"]
        assert sum(r["block_tokens"]) == r["n_tokens"]
    assert (out / "extension.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| previous | reset |" in report and "±" in report
    printed = capsys.readouterr().out
    assert "previous/reset" in printed and "±" in printed

    # a second run into the same folder is refused; --resume reuses finished runs and results
    before = (out / "results" / "previous.json").read_text()
    assert main(["extend", *TINY, "--seq-len", "16", "--out", str(out)]) == 2
    assert main(["extend", *TINY, "--seq-len", "16", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "already trained" in printed and "already evaluated" in printed
    assert (out / "results" / "previous.json").read_text() == before


def test_extend_sweeps_training_lengths_and_widths(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    tiny = [a for a in TINY if not a.startswith("--model.d_model")]
    argv = [*tiny, "--seq-len", "16,32", "--d-model", "8,16", "--protocol", "reset", "--out", str(out)]
    assert main(["extend", *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in summary["runs"]]
    assert len(names) == 8 and "previous-d8-T32" in names and "zero-d16-T16" in names
    for run in summary["runs"]:
        assert run["extension"]["reset"]["l0"] == run["seq_len"]
        assert (out / "results" / f"{run['name']}.json").is_file()
    assert (out / "sweep-T.png").stat().st_size > 0
    assert (out / "size-T-zero.png").stat().st_size > 0
    # resumable: a rerun trains and evaluates nothing again
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert main(["extend", *argv, "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")} == stamps


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seq-len", "0"], "--seq-len values must be distinct positive"),
        (["--seq-len", ""], "--seq-len must list at least one value"),
        (["--seq-len", "16,x"], "--seq-len must be a comma-separated list"),
        (["--d-model", "16,16"], "--d-model values must be distinct"),
        (["--seq-len", "64"], "fewer than 2 evaluation lengths >= the training length T=64"),
        (["--max-length", "8"], "--max-length must be >= 16"),
        (["--policies", ","], "--policies must list distinct"),
        (["--d-model", "8,16"], "--d-model and --model.d_model both given"),
        (["--policies", "zero,bogus"], "train.policy must be one of"),
    ],
)
def test_extend_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["extend", *TINY, *extra, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longssm: error:") and message in err and "\n" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_int_lists_and_lengths():
    assert parse_int_list("16, 32,64", "--seq-len") == [16, 32, 64]
    assert parse_int_list(None, "--seq-len") is None
    assert power_lengths(16, 64) == [16, 32, 64]
    assert power_lengths(16, 100) == [16, 32, 64, 100]
    assert set(PRESETS) == {"quick", "full", "paper"}


def test_extend_resume_retrains_past_a_damaged_final_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ext"
    argv = [*TINY, "--policies", "zero", "--protocol", "reset", "--train.checkpoint_every=3",
            "--out", str(out)]
    assert main(["extend", *argv]) == 0
    final = out / "runs" / "zero" / "checkpoints" / "ckpt-00000006" / "model.safetensors"
    data = bytearray(final.read_bytes())
    data[-1] ^= 1
    final.write_bytes(bytes(data))
    (out / "results" / "zero.json").unlink()
    capsys.readouterr()
    assert main(["extend", *argv, "--resume"]) == 0
    printed = capsys.readouterr()
    assert "already trained" not in printed.out and "resuming from ckpt-00000003" in printed.out + printed.err
    assert (out / "results" / "zero.json").is_file()
