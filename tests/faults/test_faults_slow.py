"""The slow fault suite (``-m slow``): kills, damage, a full disk, read-only folders, concurrency.

Each test prints a ``FAULTS`` line with its counts (run with ``-s`` to see them); the issue's
closing note quotes them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longssm import checkpoint as ckpt_io

from .common import TINY, checkpoints, cli, train_tiny

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[2] / "src")
STEPS = 24


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["LONGSSM_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_cmd(out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "longssm.cli", "train", "--out", str(out), "--quiet"]
    if resume:
        return cmd + ["--resume"]
    return cmd + [*TINY, f"--train.steps={STEPS}", "--train.checkpoint_every=2",
                  "--train.keep_last=2", "--train.eval_every=6"]  # fmt: skip


def _final_tensors(out: Path) -> dict:
    ckpt = checkpoints(out)[-1]
    meta = ckpt_io.verify_checkpoint(ckpt)
    tensors = {}
    for name in ("model", "optimizer", "extra"):
        tensors.update({f"{name}/{k}": v.clone() for k, v in ckpt_io.read_tensors(ckpt, name).items()})
    return {"step": meta["step"], "loader": meta["loader"], "tensors": tensors}


def _same_finish(a: Path, b: Path) -> bool:
    x, y = _final_tensors(a), _final_tensors(b)
    if x["step"] != y["step"] or x["loader"] != y["loader"] or x["tensors"].keys() != y["tensors"].keys():
        return False
    if not all(torch.equal(x["tensors"][k], y["tensors"][k]) for k in x["tensors"]):
        return False
    # metrics: every column but the timings
    def rows(path):
        lines = (path / "metrics.csv").read_text().splitlines()
        return [line.split(",")[:5] + line.split(",")[6:8] for line in lines]
    return rows(a) == rows(b)


def test_random_sigkill_and_resume_finish_bitwise(tmp_path):
    env = _env(tmp_path)
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(_train_cmd(ref, False), env=env, check=True, capture_output=True)
    duration = time.perf_counter() - t0
    rng = random.Random(18)
    kills = resumes = identical = 0
    n_runs = 4
    for i in range(n_runs):
        out = tmp_path / f"run{i}"
        resume = False
        for attempt in range(12):
            proc = subprocess.Popen(_train_cmd(out, resume), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)  # fmt: skip
            try:
                proc.wait(timeout=rng.uniform(0.3, duration * 0.9) if attempt < 4 else None)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            else:
                _, err = proc.communicate()
                assert proc.returncode == 0, err.decode()
                break
            finally:
                with contextlib.suppress(Exception):
                    proc.stdout.close()
                    proc.stderr.close()
            # a kill before config.json leaves nothing (a fresh start); after it, --resume
            resume = (out / "config.json").exists()
            resumes += resume
        identical += _same_finish(ref, out)
    print(f"\nFAULTS kill: runs {n_runs}, kills {kills}, resumes {resumes}, "
          f"bitwise-identical finishes {identical}/{n_runs}")
    assert identical == n_runs and kills > 0


def _damage(path: Path, how: str, rng: random.Random) -> None:
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    else:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))


FILES = ["model.safetensors", "optimizer.safetensors", "extra.safetensors", "meta.json"]


def test_every_damage_to_every_file_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    pristine = tmp_path / "pristine"
    train_tiny(pristine, capsys, 3, 1)
    reference = _final_tensors(pristine)
    rng = random.Random(18)
    tried = refused = fallbacks = identical = 0
    for name in FILES:
        for how in ["flip"] * 6 + ["truncate"] * 3 + ["delete"]:
            run = tmp_path / f"r-{tried}"
            shutil.copytree(pristine, run)
            _damage(checkpoints(run)[-1] / name, how, rng)
            tried += 1
            code, _, err = cli(["generate", run, "-n", "2"], capsys)
            lines = err.strip().splitlines()
            refused += code == 2 and len(lines) == 1 and lines[0].startswith("longssm: error: ")
            code, out, err = cli(["train", "--out", run, "--resume", "--quiet"], capsys)
            assert code == 0, err
            fallbacks += sum("skipping damaged checkpoint(s) ckpt-00000003" in x
                             for x in out.splitlines())  # fmt: skip
            final = _final_tensors(run)
            identical += all(torch.equal(reference["tensors"][k], final["tensors"][k])
                             for k in reference["tensors"])  # fmt: skip
            shutil.rmtree(run)
    print(f"\nFAULTS damage: corruptions tried {tried}, refused on load {refused}, resumes that "
          f"fell back in one line {fallbacks}, bitwise-identical after resume {identical}")
    assert refused == tried and fallbacks == tried and identical == tried


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)  # fmt: skip
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    with _tmpfs(tmp_path / "small", "1200k") as disk:
        out = disk / "run"
        code, _, err = cli(["train", "--out", out, "--quiet", *TINY, "--train.steps=400",
                            "--train.checkpoint_every=1", "--train.keep_last=0"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], err
        written = checkpoints(out)
        for ckpt in written:
            ckpt_io.verify_checkpoint(ckpt)
        temps = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        print(f"\nFAULTS full disk: exit {code}, {len(written)} checkpoints all verify, "
              f"{len(temps)} temporary folders left")
        assert not temps and written


def test_read_only_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    with _tmpfs(tmp_path / "ro", "4m") as disk:
        run = disk / "run"
        train_tiny(run, capsys, 2, 1)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        cases = [
            ["train", "--out", run, "--resume", "--quiet", "--train.steps=3"],
            ["train", "--out", disk / "new", "--quiet", *TINY],
            ["eval", run, "--lengths", "8:16", "--n-tokens", "64", "--no-progress"],
        ]
        codes = []
        for args in cases:
            code, _, err = cli(args, capsys)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("longssm: error: "), err
            codes.append(code)
        print(f"\nFAULTS read-only: {len(cases)} commands, exits {codes}")


def test_concurrent_runs_on_one_folder(tmp_path):
    env = _env(tmp_path)
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, False), env=env, check=True, capture_output=True)
    outcomes = []
    for i in range(3):
        out = tmp_path / f"c{i}"
        procs = [subprocess.Popen(_train_cmd(out, False), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
        results = [(p.wait(), p.communicate()[1].decode()) for p in procs]
        codes = sorted(c for c, _ in results)
        assert codes == [0, 2], results
        err = next(e for c, e in results if c == 2)
        assert len(err.strip().splitlines()) == 1 and (
            "in use by another longssm process" in err or "already holds a run" in err
        ), err
        assert _same_finish(ref, out)
        outcomes.append("in use" if "in use" in err else "already holds")
    print(f"\nFAULTS concurrent: {len(outcomes)} pairs, one exit 0 + one exit 2 each "
          f"({outcomes}), every finished run bitwise equal to the reference")
