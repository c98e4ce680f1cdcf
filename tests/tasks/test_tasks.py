"""Registry, batches, recall labels, metrics, the tagging model and the CLI's bad input."""

import json

import numpy as np
import pytest
import torch

from longssm.cli import main
from longssm.tasks import TASKS, TaskRunConfig, get_task, recall, run
from longssm.tasks.languages import languages
from longssm.tasks.metrics import sequence_scores, summarise, wilson
from longssm.tasks.trainer import eval_lengths, evaluate_bins, parse_mixer


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_makes_a_batch(name):
    task = get_task(name)
    n = task.lengths(5, 40)[0]
    b = task.batch(3, n, np.random.default_rng(0))
    length = n + 1 if task.family == "language" else n
    assert b.inputs.shape[:2] == (3, length) and b.mask.shape == b.score.shape == (3, length)
    assert b.score.any(axis=1).all()
    if task.kind == "set":
        assert b.targets.shape == (3, length, task.n_out)
        assert set(np.unique(b.targets)) <= {0.0, 1.0}
    elif task.kind == "class":
        assert b.targets.max() < task.n_out and b.inputs.max() < task.n_in


def test_seeded_generators_repeat():
    for name in ("dyck1", "a5", "area", "mqar"):
        a = get_task(name).batch(2, 12, np.random.default_rng(5))
        b = get_task(name).batch(2, 12, np.random.default_rng(5))
        assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all()


def test_mqar_labels_by_lookup():
    inputs, targets, mask = recall.mqar(4, 30, np.random.default_rng(0))
    for b in range(4):
        bound = {int(k): int(v) - recall.KEYS for k, v in zip(inputs[b, 0:20:2], inputs[b, 1:20:2])}
        assert len(bound) == 10
        for t in np.flatnonzero(mask[b]):
            assert targets[b, t] == bound[int(inputs[b, t])]


def test_passkey_label_by_lookup():
    inputs, targets, mask = recall.passkey(5, 40, np.random.default_rng(1))
    for b in range(5):
        where = int(np.flatnonzero(inputs[b] == recall.MARK)[0])
        assert targets[b, -1] == inputs[b, where + 1] and mask[b].sum() == 1


def test_wilson_interval():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_scores_in_both_units():
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    outputs = torch.tensor([[[3.0, -3.0], [-3.0, 3.0]], [[3.0, -3.0], [3.0, 3.0]]])
    score = torch.ones(2, 2, dtype=torch.bool)
    assert sequence_scores("set", outputs, targets, score).tolist() == [[2, 2], [1, 2]]
    score[1, 1] = False  # the wrong position is not scored
    assert sequence_scores("set", outputs, targets, score).tolist() == [[2, 2], [1, 1]]
    counts = np.array([[3, 3], [1, 3], [3, 3], [3, 3]])
    seq = summarise("set", counts)
    assert seq["unit"] == "sequence" and seq["value"] == 0.75 and seq["low"] < 0.75 < seq["high"]
    pos = summarise("class", counts, unit="position")
    assert pos["value"] == pytest.approx(10 / 12) and pos["low"] <= pos["value"] <= pos["high"]
    assert pos["sequence"]["value"] == 0.75 and pos["position"]["n"] == 12


def test_eval_lengths_cover_the_bin():
    """Every length of a bin is scored (the suite once scored only 4 lengths per bin)."""
    got = eval_lengths(list(range(11, 21)), 100)
    assert sorted(set(got.tolist())) == list(range(11, 21))
    assert (np.bincount(got)[11:] == 10).all()
    wide = eval_lengths(list(range(81, 201)), 100)
    assert len(set(wide.tolist())) == 100 and wide[0] == 81 and wide[-1] >= 195


class _GroupStub(torch.nn.Module):
    """Oracle (the running product by the group table) or a copier (right only when g_1·…·g_t =
    g_t, e.g. always at t = 1): one-hot logits."""

    def __init__(self, group, oracle):
        super().__init__()
        self.group, self.oracle = group, oracle

    def forward(self, inputs, state=None):
        words = inputs.numpy()
        answer = self.group.running_products(words) if self.oracle else words
        return torch.nn.functional.one_hot(torch.from_numpy(answer), self.group.order).float(), None


@pytest.mark.parametrize("oracle", [True, False], ids=["oracle", "copier"])
def test_word_problem_scored_per_length(oracle):
    from longssm.tasks.groups import get_group

    task = get_task("z60")
    cfg = TaskRunConfig(task="z60", test_bins=[(1, 10), (11, 20)], eval_samples=400,
                        eval_batch=100)
    bins = evaluate_bins(task, _GroupStub(get_group("z60"), oracle), cfg)
    assert [b["unit"] for b in bins] == ["position", "position"]
    assert [r["k"] for r in bins[1]["per_length"]] == list(range(11, 21))
    assert all(r["n"] == 400 for b in bins for r in b["per_length"])
    if oracle:
        assert all(b["value"] == 1.0 and b["sequence"]["value"] == 1.0 for b in bins)
        return
    # the copier is right at k = 1 and otherwise only by chance (1/60): 0.1 + 0.9/60 in bin 1
    assert bins[0]["per_length"][0]["value"] == 1.0
    assert all(r["high"] < 0.1 for r in bins[0]["per_length"][1:])
    assert bins[0]["low"] <= 0.1 + 0.9 / 60 <= bins[0]["high"]
    assert bins[1]["value"] < 0.05 and bins[0]["sequence"]["value"] == 0.0


class _RecallStub(torch.nn.Module):
    """Answers the first ``right`` queries of every MQAR sequence by lookup, the rest wrongly."""

    def __init__(self, right):
        super().__init__()
        self.right = right

    def forward(self, inputs, state=None):
        ids = inputs.numpy()
        answer = np.zeros(ids.shape, dtype=np.int64)
        for row, seq in zip(answer, ids):
            k = len(seq) // 3
            table = dict(zip(seq[0:2 * k:2], seq[1:2 * k:2] - recall.KEYS))
            for j, t in enumerate(range(2 * k, 3 * k)):
                value = table[seq[t]]
                row[t] = value if j < self.right else (value + 1) % recall.VALUES
        return torch.nn.functional.one_hot(torch.from_numpy(answer), recall.VALUES).float(), None


def test_mqar_scored_per_query():
    """Zoology's MQAR accuracy averages over queries: 2 right of 8 per sequence -> 25%, where the
    every-query-right sequence unit (kept in the record) gives 0."""
    task = get_task("mqar")
    cfg = TaskRunConfig(task="mqar", test_bins=[(24, 24)], eval_samples=50)
    (row,) = evaluate_bins(task, _RecallStub(2), cfg)
    assert row["unit"] == "position" and row["value"] == pytest.approx(0.25)
    assert row["sequence"]["value"] == 0.0
    (row,) = evaluate_bins(task, _RecallStub(8), cfg)
    assert row["value"] == 1.0 and row["sequence"]["value"] == 1.0


def test_flipflop_scores_the_reads():
    """Liu et al.: strings start with w and end with r; only the positions after r are scored."""
    task, lang = get_task("flipflop"), languages()["flipflop"]
    b = task.batch(50, 40, np.random.default_rng(3))
    alphabet = lang.alphabet
    for ids, score, targets in zip(b.inputs, b.score, b.targets):
        s = "".join(alphabet[i - 1] for i in ids[1:])
        assert s[0] == "w" and s[-2] == "r" and lang.member(s)
        reads = [t for t in range(1, len(s) + 1) if s[t - 1] == "r"]
        assert np.flatnonzero(score).tolist() == reads
        assert all(targets[t].sum() == 1 for t in reads)  # a read's next set is one bit


def test_parse_mixer_uses_the_registry():
    assert parse_mixer("s4d+eigen=direct") == ("s4d", {}, {"eigen_param": "direct"})
    assert parse_mixer("mamba+scan=naive") == ("mamba", {"scan": "naive"}, {})
    with pytest.raises(ValueError, match="unknown mamba mixer option"):
        parse_mixer("mamba+negative_eigenvalues_x=true")
    with pytest.raises(ValueError, match="eigen_param"):
        parse_mixer("s4d+eigen=bogus")


def test_training_learns_a_trivial_language():
    """1* (constant next set {1, EOS}): one LSTM layer gets the ID bin mostly right."""
    cfg = TaskRunConfig(task="tomita1", mixer="lstm", layers=1, d_model=16, train_lengths=(2, 10),
                        test_bins=[(2, 10), (12, 20)], steps=40, lr=1e-2, eval_samples=20,
                        eval_batch=10, progress=False)
    record = run(cfg)
    assert record["train"]["finite"]
    assert record["bins"][0]["value"] > 0.8
    assert len(record["bins"]) == 2 and record["bins"][0]["metric"] == "accuracy"


def test_regression_run_reports_nmse():
    cfg = TaskRunConfig(task="mem-exp", mixer="s4d", layers=1, d_model=8, d_state=4,
                        train_lengths=(5, 10), test_bins=[(5, 10)], steps=5, eval_samples=10,
                        eval_batch=5, progress=False)
    bins = run(cfg)["bins"]
    assert bins[0]["metric"] == "nmse" and bins[0]["low"] <= bins[0]["value"] <= bins[0]["high"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["task", "nosuch"], "unknown task"),
        (["task", "parity", "--train-lengths", "9:3"], "lengths in order"),
        (["task", "parity", "--test-lengths", "5:x"], "a:b"),
        (["task", "mqar", "--train-lengths", "3:30", "--test-lengths", "300:600"],
         "exceeds task mqar's maximum length 192"),
        (["task", "parity", "--train-lengths", "1:20000"], "maximum length"),
        (["task", "anbncn", "--train-lengths", "4:5"], "no sequences"),
        (["task", "parity", "--mixer", "nosuch"], "mixer must be one of"),
        (["task", "parity", "--layers", "0"], "--layers"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    code = main([*args, "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_cli_writes_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["task", "passkey", "--mixer", "gru", "--layers", "1", "--train-lengths", "3:6",
            "--test-lengths", "3:6,7:12", "--quick", "--steps", "3", "--quiet", "--out", str(out)]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert [b["lo"] for b in record["bins"]] == [3, 7]
    assert "3-6:" in capsys.readouterr().out
    before = out.read_text()
    assert main(args) == 2 and out.read_text() == before


def test_suite_matrix_is_valid():
    """Every suite cell names a known task with generable lengths; unknown controls are skipped."""
    from longssm.tasks.suite import CONTROLS, suite_configs
    from longssm.tasks.trainer import check_lengths

    configs = suite_configs(quick=True)
    assert {c.mixer for c in configs} >= set(CONTROLS)
    for cfg in configs:
        check_lengths(get_task(cfg.task), cfg.train_lengths, cfg.test_bins)


def test_interrupted_suite_leaves_the_previous_data_file(tmp_path, monkeypatch):
    """Records go to tasks.partial.json as they finish; tasks.json and the page are replaced only
    when the whole matrix is done (an interrupted run once left 8 of 53 records in tasks.json)."""
    from longssm.tasks import suite

    configs = suite.suite_configs(quick=True)[:3]
    monkeypatch.setattr(suite, "suite_configs", lambda quick, seed: configs)
    done = []

    def fake_run(cfg):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(cfg.task)
        return {"task": cfg.task}

    monkeypatch.setattr(suite, "run", fake_run)
    (tmp_path / "tasks.json").write_text('{"records": ["complete"]}')
    with pytest.raises(KeyboardInterrupt):
        suite.run_suite(str(tmp_path))
    assert json.loads((tmp_path / "tasks.json").read_text()) == {"records": ["complete"]}
    partial = json.loads((tmp_path / "tasks.partial.json").read_text())
    assert [r["task"] for r in partial["records"]] == done
    assert not (tmp_path / "tasks.md").exists()
