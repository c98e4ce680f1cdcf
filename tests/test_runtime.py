"""longssm.runtime: keeping freed memory (page faults of a repeated allocation pattern, counted in
fresh processes with and without it) and the thread setter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from longssm import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees forty 1 MiB tensors per round (a training step's pattern in miniature) and
# prints the page faults of three rounds after two warm-up rounds.
_CHURN = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from longssm.runtime import keep_freed_memory
    assert keep_freed_memory()

def rounds(n):
    for _ in range(n):
        tensors = [torch.ones(256 * 1024) for _ in range(40)]
        del tensors

rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(3)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    )  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_removes_the_page_faults_of_repeated_allocations():
    # glibc's default thresholds move with the allocation history, so whether the default
    # faults on this pattern depends on the heap's layout at start (seen: 256 or 10,209 faults
    # for the same script). Both processes start from the fixed 128 KiB threshold instead, where
    # every 1 MiB tensor is mapped afresh; keep_freed_memory must override it.
    static = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}
    mapped = _faults("default", **static)
    kept = _faults("keep", **static)
    # 3 rounds x 40 MiB = 30,720 pages
    assert mapped > 25_000, mapped
    assert kept < mapped / 20, (kept, mapped)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_can_be_turned_off_by_the_environment():
    code = "from longssm.runtime import keep_freed_memory; print(keep_freed_memory())"
    env = {**os.environ, "LONGSSM_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)  # fmt: skip
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_is_idempotent_in_process():
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True


def test_set_cpu_threads_sets_torch_and_numba():
    before = torch.get_num_threads()
    try:
        runtime.set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        numba = pytest.importorskip("numba")
        assert numba.get_num_threads() == 1
    finally:
        runtime.set_cpu_threads(before)
