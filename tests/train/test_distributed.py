"""Data-parallel training under torchrun: equal to one process, resumable across world sizes.

Real jobs: ``python -m torch.distributed.run --nproc_per_node=2`` with gloo on CPU over the
loopback interface. Two launches are shared by the tests (module fixtures), because each costs
seconds of interpreter, torch and numba start-up (the reference ``single`` runs in-process):
    crashed   ``longssm train`` on 2 ranks, the reference config in float64, through a launcher
              (``CRASH_LAUNCHER``) that makes rank 1 SIGKILL itself after step 4, as it starts
              step 5 (the last checkpoint is step 3's); the library has no test hook
    worker    ``train`` in a script on 2 ranks: the reference config (``ddp``); resumed from a
              copy of ``crashed``; every other policy for 3 steps; sharded evaluation
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_close
from longssm import checkpoint as ckpt_io
from longssm.cli import main
from longssm.config import ConfigError, RunConfig
from longssm.data import ContiguousStreams
from longssm.dist import assign_plans, owned_streams
from longssm.eval.lengths import evaluate_lengths
from longssm.models import SSMLanguageModel
from longssm.train.loop import train

SRC = Path(__file__).resolve().parents[2] / "src"
CONFIG = {
    "model": dict(mixer="mamba", d_model=16, n_layers=2, d_state=4, expand=2, d_conv=4),
    "data": {"corpus": "markov:1:12:0:30000", "seq_len": 8, "batch_size": 4},
    "train": dict(
        steps=6, dtype="float64", lr=1e-2, warmup_steps=2, log_every=1, eval_every=3,
        eval_batches=2, diag_every=2, checkpoint_every=3, keep_last=0, progress=False,
    ),
}
# Policies other than ``previous``, each for 3 steps; bptt:2 with grad_accum 2 exercises no_sync.
POLICY_RUNS = {
    "passing": {"policy": "passing"},
    "p-reset": {"policy": "p-reset:0.5"},
    "fitted-noise": {"policy": "fitted-noise"},
    "learned": {"policy": "learned"},
    "noise": {"policy": "noise", "noise_std": 0.5},
    "bptt": {"policy": "bptt:2", "grad_accum": 2},
}
EVAL_LENGTHS = [8, 16, 24]
EVAL_ARGS = dict(protocol="all", n_tokens=64, batch_size=2, chunk_size=8, progress=False)
# Runs the normal CLI entry point; on rank CRASH_RANK it first wraps the loop's
# ``accumulate_gradients`` so that the process SIGKILLs itself when asked for step index CRASH_AT,
# i.e. after step CRASH_AT is complete (its checkpoint, if any, written) and before the next.
CRASH_LAUNCHER = """
import inspect, os, signal, sys
import longssm.train.loop as loop
from longssm.cli import main

CRASH_RANK, CRASH_AT = 1, 4
if int(os.environ["RANK"]) == CRASH_RANK:
    accumulate = loop.accumulate_gradients
    signature = inspect.signature(accumulate)

    def accumulate_or_die(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments["step"] == CRASH_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return accumulate(*args, **kwargs)

    loop.accumulate_gradients = accumulate_or_die
sys.exit(main(sys.argv[1:]))
"""
WORKER = """
import json, sys
import torch
from longssm.checkpoint import load_model
from longssm.config import RunConfig
from longssm.dist import init_distributed
from longssm.eval.lengths import evaluate_lengths_sharded
from longssm.train.loop import train

spec = json.loads(open(sys.argv[1]).read())
ctx = init_distributed("cpu")
for name, cfg in spec["runs"].items():
    resume = name.startswith("resumed")
    train(RunConfig.from_dict(cfg), spec["root"] + "/" + name, resume=resume, log=lambda *a: None)
model, _, _ = load_model(spec["eval_model"])
tokens = torch.tensor(spec["eval_tokens"])
records = evaluate_lengths_sharded(model, tokens, spec["eval_lengths"], ctx, **spec["eval_args"])
with open(spec["root"] + f"/eval-{ctx.rank}.json", "w") as f:
    json.dump(records, f)
ctx.close()
"""


def config(cache: Path, **train_kw) -> dict:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["data"]["cache_dir"] = str(cache)
    cfg["train"].update(train_kw)
    return cfg


def overrides(cfg: dict) -> list[str]:
    return [f"--{section}.{k}={v}" for section, table in cfg.items() for k, v in table.items()
            if k != "progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ABORT = "terminate called without an active exception"


def torchrun(args: list[str], nproc: int = 2):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=f"{SRC}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def torchrun_once_more(args: list[str], reset) -> subprocess.CompletedProcess:
    """``torchrun(args)`` after ``reset()``; relaunched once when a rank hit the gloo abort.

    A rank of these 2-process gloo jobs on 2 busy cores has been seen to abort with
    "terminate called without an active exception" (std::terminate in native code; about 2 in
    12 full-suite runs, also before this project's own changes). That abort, and only it, earns
    one clean relaunch; any other failure is reported as it is.
    """
    for attempt in range(2):
        reset()
        proc = torchrun(args)
        if proc.returncode == 0 or ABORT not in proc.stderr or attempt == 1:
            return proc
    return proc


def train_cli(out: Path, cfg: dict, *extra: str, launcher: list[str] = ("-m", "longssm.cli")):
    return torchrun([*launcher, "train", "--quiet", "--out", str(out), *extra, *overrides(cfg)])


def quiet(*args):
    pass


def weights(run: Path) -> dict:
    model, _, _ = ckpt_io.load_model(run)
    return model.state_dict()


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert_close(wa[name], wb[name], atol=1e-10, rtol=0, name=name)


@pytest.fixture(scope="module", autouse=True)
def _one_numba_thread():
    """Numba's parallel kernels on OpenMP threads slow torch's conv1d 700x afterwards (seen on
    2 cores, numba 0.68); the jobs get NUMBA_NUM_THREADS=1, the in-process runs this."""
    try:
        import numba
    except ImportError:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def single(root):
    """One process, the reference (it also fills the token cache the jobs read)."""
    train(RunConfig.from_dict(config(root / "cache")), root / "single", log=quiet)
    return root / "single"


@pytest.fixture(scope="module")
def crashed(root, single):
    (root / "crash_launcher.py").write_text(CRASH_LAUNCHER)
    launcher = [str(root / "crash_launcher.py")]
    proc = train_cli(root / "crashed", config(root / "cache"), launcher=launcher)
    return root / "crashed", proc


@pytest.fixture(scope="module")
def worker(root, single, crashed):
    """The 2-rank script; its runs land in ``root / name``."""
    run, _ = crashed
    gen = torch.Generator().manual_seed(0)
    runs = {"ddp": config(root / "cache"), "resumed2": config(root / "cache")}
    runs.update({f"w-{k}": config(root / "cache", steps=3, **v) for k, v in POLICY_RUNS.items()})
    spec = {
        "root": str(root),
        "runs": runs,
        "eval_model": str(single),
        "eval_tokens": torch.randint(0, 12, (400,), generator=gen).tolist(),
        "eval_lengths": EVAL_LENGTHS,
        "eval_args": EVAL_ARGS,
    }
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "worker.py").write_text(WORKER)
    def reset():
        for name in [*runs, "resumed2"]:
            shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(run, root / "resumed2")

    proc = torchrun_once_more([str(root / "worker.py"), str(root / "spec.json")], reset)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return spec


def test_owned_streams_interleave_and_reject_indivisible_batch():
    assert owned_streams(1, 3, 6) == [1, 4]
    assert sorted(owned_streams(0, 2, 8) + owned_streams(1, 2, 8)) == list(range(8))
    with pytest.raises(ConfigError, match="B=6 is not divisible by the number of processes N=4"):
        owned_streams(0, 4, 6)


def test_rows_loader_reads_the_owned_streams_of_the_global_layout():
    tokens = np.arange(1000)
    full = ContiguousStreams(tokens, batch_size=4, seq_len=8, offset_seed=3)
    part = ContiguousStreams(tokens, batch_size=4, seq_len=8, offset_seed=3, rows=[1, 3])
    for _ in range(40):
        a, b = next(full), next(part)
        assert torch.equal(a.inputs[[1, 3]], b.inputs) and torch.equal(a.resets[[1, 3]], b.resets)
    assert full.state_dict() == part.state_dict()


def test_assign_plans_balances_and_covers_every_plan():
    shares = assign_plans([10, 1, 7, 3, 3], 2)
    assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3, 4]
    # largest first onto the least-loaded rank: loads 13 and 11
    assert shares == [[0, 4], [1, 2, 3]]


def test_two_ranks_equal_one_process(root, single, worker):
    run = root / "ddp"
    assert_same_weights(run, single)
    assert losses(run) == pytest.approx(losses(single), abs=2e-6) and len(losses(run)) == 6
    # carried states are gathered into global stream order
    a = ckpt_io.read_tensors(ckpt_io.resolve_checkpoint(run), "extra")
    b = ckpt_io.read_tensors(ckpt_io.resolve_checkpoint(single), "extra")
    carried = sorted(k for k in a if k.startswith("carried."))
    assert carried and carried == sorted(k for k in b if k.startswith("carried."))
    for key in carried:
        assert_close(a[key], b[key], atol=1e-10, rtol=0, name=key)
    assert ckpt_io.read_meta(ckpt_io.resolve_checkpoint(run))["world_size"] == 2
    # rank 0 alone validated (steps 3 and 6) and wrote one row per step
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r["val_loss_reset"]] == ["3", "6"]


def test_killed_rank_fails_the_job_and_keeps_the_last_checkpoint(root, single, crashed):
    run, proc = crashed
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "SIGKILL" in output and "FAILED" in output, output[-3000:]
    model, ckpt, meta = ckpt_io.load_model(run)
    assert meta["step"] == 3 and ckpt.name.endswith("00000003")
    assert isinstance(model, SSMLanguageModel)
    # until the kill the CLI job matched one process, and only rank 0 logged
    assert_same_weights(ckpt, single / "checkpoints" / ckpt.name)
    assert proc.stdout.count("data parallel: 2 ranks, 2 streams each") == 1


def test_resume_on_two_and_on_one_rank_continues_exactly(root, single, crashed, worker):
    run, _ = crashed
    shutil.copytree(run, root / "resumed1")
    train(RunConfig.from_dict(config(root / "cache")), root / "resumed1", resume=True, log=quiet)
    for resumed in (root / "resumed2", root / "resumed1"):
        assert_same_weights(resumed, single)
        assert losses(resumed) == pytest.approx(losses(single), abs=2e-6)
        assert len(losses(resumed)) == 6
    assert ckpt_io.read_meta(ckpt_io.resolve_checkpoint(root / "resumed1"))["world_size"] == 1


@pytest.mark.parametrize("name", list(POLICY_RUNS))
def test_every_policy_on_two_ranks_equals_one_process(root, worker, name):
    cfg = config(root / "cache", steps=3, **POLICY_RUNS[name])
    train(RunConfig.from_dict(cfg), root / f"s-{name}", log=quiet)
    assert_same_weights(root / f"w-{name}", root / f"s-{name}")
    assert losses(root / f"w-{name}") == pytest.approx(losses(root / f"s-{name}"), abs=2e-6)


def test_sharded_evaluation_equals_one_process(root, worker):
    model, _, _ = ckpt_io.load_model(worker["eval_model"])
    tokens = torch.tensor(worker["eval_tokens"])
    expected = evaluate_lengths(model, tokens, EVAL_LENGTHS, **EVAL_ARGS)
    for rank in (0, 1):
        got = json.loads((root / f"eval-{rank}.json").read_text())
        assert [(r["protocol"], r["length"]) for r in got] == [
            (r["protocol"], r["length"]) for r in expected
        ]
        for g, e in zip(got, expected):
            assert g["loss"] == pytest.approx(e["loss"], abs=1e-12)
            assert g["n_tokens"] == e["n_tokens"]


def test_eval_cli_under_torchrun_equals_one_process(single, tmp_path):
    args = ["eval", str(single), "--lengths", "8,16,24", "--protocol", "all", "--n-tokens", "64",
            "--batch-size", "2", "--chunk-size", "8", "--no-progress"]  # fmt: skip
    proc = torchrun_once_more(["-m", "longssm.cli", *args, "--out", str(tmp_path / "two")],
                              lambda: shutil.rmtree(tmp_path / "two", ignore_errors=True))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    (two,) = (tmp_path / "two").glob("*.json")
    (one,) = (tmp_path / "one").glob("*.json")
    got, expected = json.loads(two.read_text())["records"], json.loads(one.read_text())["records"]
    assert [(r["protocol"], r["length"]) for r in got] == [
        (r["protocol"], r["length"]) for r in expected
    ]
    for g, e in zip(got, expected):
        assert g["loss"] == pytest.approx(e["loss"], abs=1e-12)


def test_indivisible_batch_fails_with_one_line_before_joining(tmp_path, monkeypatch, capsys):
    # torchrun's environment for rank 0 of 4; the check runs before any process group is made
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    cfg = config(tmp_path / "cache")
    cfg["data"]["batch_size"] = 6
    code = main(["train", "--quiet", "--out", str(tmp_path / "odd"), *overrides(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "longssm: error: the global batch size B=6 is not divisible by the number of processes "
        "N=4; choose data.batch_size (or tokens_per_step // seq_len) as a multiple of 4"
    )
    assert not (tmp_path / "odd").exists()
