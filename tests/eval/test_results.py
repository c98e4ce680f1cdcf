"""Results files: JSON and CSV round trips, machine info, and no silent overwrite."""

import json
import math

import pytest

from longssm.eval.errors import EvalError
from longssm.eval.results import (
    FORMAT,
    find_results,
    load_results,
    read_csv,
    records_of,
    save_results,
)
from tests.eval.synthetic import fake_results


def test_round_trip(tmp_path):
    results = fake_results("run-a", 32)
    json_path, csv_path = save_results(results, tmp_path)
    assert json_path.name == "results.json" and csv_path.name == "results.csv"
    loaded = load_results(json_path)
    assert loaded["format"] == FORMAT and loaded["path"] == str(json_path)
    assert loaded["records"] == results["records"]
    assert loaded["machine"]["cpu_count"] and loaded["machine"]["torch"]
    assert loaded["model_config"] == {"mixer": "mamba", "d_model": 16}
    rows = read_csv(csv_path)
    assert len(rows) == len(results["records"])
    assert rows[0]["run"] == "run-a" and rows[0]["length"] == 16
    assert rows[0]["loss"] == pytest.approx(results["records"][0]["loss"], rel=1e-12)
    assert [r["length"] for r in records_of(loaded, "stream")] == [16, 32, 64, 128, 256]


def test_never_overwrites_without_force(tmp_path):
    first, _ = save_results(fake_results("a", 32), tmp_path)
    second, second_csv = save_results(fake_results("b", 32), tmp_path)
    assert (second.name, second_csv.name) == ("results-2.json", "results-2.csv")
    assert load_results(first)["run"] == "a"
    # a stray CSV also blocks its stem
    (tmp_path / "results-3.csv").write_text("x")
    third, _ = save_results(fake_results("c", 32), tmp_path)
    assert third.name == "results-4.json"
    forced, _ = save_results(fake_results("d", 32), tmp_path, force=True)
    assert forced == first and load_results(first)["run"] == "d"


def test_non_finite_losses_survive(tmp_path):
    results = fake_results("a", 32)
    results["records"][0]["loss"] = math.inf
    path, _ = save_results(results, tmp_path)
    assert load_results(path)["records"][0]["loss"] == math.inf


def test_find_results_and_errors(tmp_path):
    save_results(fake_results("a", 32), tmp_path)
    save_results(fake_results("b", 64), tmp_path)
    assert sorted(r["run"] for r in find_results([tmp_path])) == ["a", "b"]
    with pytest.raises(EvalError, match="no such results file"):
        load_results(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(EvalError, match="not a longssm"):
        load_results(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EvalError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError, match="no results JSON"):
        find_results([empty])
