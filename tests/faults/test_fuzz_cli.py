"""Property-based (hypothesis) fuzzing of the command line (``-m slow``).

Random commands, options, values and ``--section.key=value`` overrides. Every case must exit 0,
or exit 2 with exactly one stderr line ``longssm: error: ...``; nothing outside ``--out`` may be
written and nothing that existed may change.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from longssm.cli import main  # noqa: E402

from .common import TINY, snapshot  # noqa: E402

pytestmark = pytest.mark.slow
CASES = int(os.environ.get("LONGSSM_FUZZ_CASES", "150"))
EXITS: Counter = Counter()

NUMBERS = ["0", "-1", "1", "2", "3", "0.5", "1e-45", "1e300", "NaN", "Infinity", "-Infinity",
           "abc", "", "1.5", "99999999999999999999"]  # fmt: skip
STRINGS = ["", "..", "../..", "/", "/nonexistent", "x.json", "bytes", "bpe:0", "zero", "passing",
           "bptt:0", "cuda", "auto", "float16", "{}", "[1]", "true"]  # fmt: skip
KEYS = ["train.lr", "train.steps", "train.noise_std", "train.policy", "train.dtype",
        "train.device", "train.grad_accum", "train.checkpoint_every", "train.beta1",
        "train.warmup_steps", "train.grad_clip", "train.keep_last", "data.seq_len",
        "data.batch_size", "data.tokens_per_step", "data.max_tokens", "data.tokenizer",
        "model.d_model", "model.n_layers", "model.mixer", "model.d_state", "model.norm_eps",
        "train.nothing", "nosection.x", "model"]  # fmt: skip
VALUE = st.sampled_from(NUMBERS + STRINGS)


@st.composite
def command_line(draw):
    command = draw(st.sampled_from(["train", "train", "train", "generate", "eval", "corpus",
                                    "extend", "plot", "bogus"]))  # fmt: skip
    args = [command]
    if command == "train":
        args += [*TINY, "--train.steps=2"]
        if draw(st.booleans()):
            args.append("--resume")
        for _ in range(draw(st.integers(0, 3))):
            args.append(f"--{draw(st.sampled_from(KEYS))}={draw(VALUE)}")
    elif command in ("generate", "eval"):
        args.append(draw(st.sampled_from(["{RUN}", "{RUN}/checkpoints/ckpt-00000002",
                                          "/nonexistent", ""])))  # fmt: skip
        options = (["-n", "--temperature", "--top-k", "--seed", "--prompt", "--device"]
                   if command == "generate" else
                   ["--lengths", "--n-tokens", "--batch-size", "--name", "--confidence",
                    "--split", "--chunk-size"])  # fmt: skip
        for _ in range(draw(st.integers(0, 3))):
            args += [draw(st.sampled_from(options)), draw(VALUE)]
        if command == "generate":
            args += ["-n", "2"]
        else:
            args += ["--no-progress", "--n-tokens", "64", "--lengths", "8:16"]
    elif command == "extend":
        for _ in range(draw(st.integers(1, 3))):
            args += [draw(st.sampled_from(["--n-tokens", "--steps", "--seq-len", "--max-length",
                                           "--policies", "--preset", "--mixer"])), draw(VALUE)]
        # no valid extend finishes in seconds: every case here must fail fast
        args += ["--quick", "--steps", "0"]
    elif command == "corpus":
        args += [draw(st.sampled_from(["markov:1:8:0:5000", "/nonexistent", "", "markov:x"]))]
    if command in ("train", "eval", "extend", "plot"):
        # the commands that write: the property is "nothing outside --out"
        args += ["--out", draw(st.sampled_from(["{OUT}", "", "{RUN}/config.json", "{OUT}"]))]
    return args


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished tiny run the fuzzer may read but must never modify."""
    root = tmp_path_factory.mktemp("fuzz")
    os.environ["LONGSSM_CACHE"] = str(root / "cache")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--out", str(root / "run"), "--quiet", *TINY, "--train.steps=2",
                     "--train.checkpoint_every=1"]) == 0  # fmt: skip
    yield root / "run"
    print(f"\nFAULTS fuzz: {sum(EXITS.values())} cases, exits {dict(sorted(EXITS.items()))}")


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=command_line())
def test_cli_fuzz(existing_run, argv):
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        out = work / "out"
        argv = [a.replace("{RUN}", str(existing_run)).replace("{OUT}", str(out)) for a in argv]
        before_run = snapshot(existing_run)
        stdout, stderr = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(work)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(argv)
        finally:
            os.chdir(cwd)
        EXITS[code] += 1
        err = stderr.getvalue()
        assert code in (0, 2), (argv, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("longssm: error: "), (argv, err)
        written = {p.name for p in work.iterdir()} - {"out"}
        assert not written, (argv, written)
        after = snapshot(existing_run)
        # a resume may append to a run it was pointed at; nothing else there may change
        assert after == before_run or "--resume" in argv, (argv, set(after) ^ set(before_run))
    finally:
        shutil.rmtree(work, ignore_errors=True)
