"""`longssm extend`: the whole experiment end to end on a tiny model and a synthetic corpus."""

import json

import pytest

from longssm.cli import main
from longssm.extend import power_lengths

TINY = [
    "--corpus", "markov:1:12:0:40000", "--steps", "6", "--max-length", "64", "--n-tokens", "256",
    "--quiet", "--quick", "--model.d_model=16", "--model.d_state=4", "--model.n_layers=1",
    "--data.tokens_per_step=256", "--train.eval_every=0", "--train.warmup_steps=1",
]


def test_extend_writes_results_report_and_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ext"
    assert main(["extend", *TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary["runs"]] == ["zero", "previous"]
    assert summary["lengths"] == [16, 32, 64]
    for run in summary["runs"]:
        assert set(run["loss"]) == {"reset", "stream", "shuffled"}
        assert run["extension"]["reset"]["kind"] in ("none", "weak", "strong")
        assert len(run["loss"]["reset"]) == 3
    assert (out / "extension.png").stat().st_size > 0
    assert (out / "results" / "previous.json").is_file()
    report = (out / "report.md").read_text()
    assert "| previous | reset |" in report
    printed = capsys.readouterr().out
    assert "previous/reset" in printed

    # a second run into the same folder is refused; --resume reuses the finished runs
    assert main(["extend", *TINY, "--out", str(out)]) == 2
    assert main(["extend", *TINY, "--out", str(out), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().out


def test_power_lengths():
    assert power_lengths(64) == [16, 32, 64]
    assert power_lengths(100) == [16, 32, 64, 100]
    with pytest.raises(ValueError, match="max-length"):
        power_lengths(8)
