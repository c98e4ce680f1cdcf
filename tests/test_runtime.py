"""longssm.runtime: keeping freed memory (page faults of a repeated allocation pattern, counted in
fresh processes with and without it), huge pages on the kept heap, and the thread setter."""

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
if sys.argv[1] == "fixed":  # glibc's default thresholds, without their dynamic rise
    from longssm.runtime import set_malloc_thresholds
    assert set_malloc_thresholds(128 * 1024, 128 * 1024)

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
def test_fixed_thresholds_map_every_tensor_afresh():
    # the benchmarks' memory run: each 1 MiB tensor mapped on its own and given back when freed,
    # so the process's resident memory follows its live tensors
    assert _faults("fixed") > 25_000


def _printed(code: str, **env) -> list[str]:
    """The words ``code`` prints in a fresh interpreter (with ``env`` added to the environment)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, **env})  # fmt: skip
    return out.stdout.split()


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_can_be_turned_off_by_the_environment():
    code = "from longssm.runtime import keep_freed_memory; print(keep_freed_memory())"
    assert _printed(code, LONGSSM_KEEP_FREED_MEMORY="0") == ["False"]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_is_idempotent_in_process():
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True


# Allocates 256 MiB of tensors after keep_freed_memory and prints whether huge pages were
# advised, the heap's size, whether its mapping carries the huge-page flag and the process's
# anonymous huge pages (KiB).
_HUGE = """
import torch
from longssm import runtime
runtime.keep_freed_memory()
tensors = [torch.ones(4 * 2**20) for _ in range(16)]  # 16 MiB each, under the mmap threshold
# the advice covers whole 2 MiB pages: it splits the heap's mapping at its unaligned ends
maps = open("/proc/self/smaps").read().split("\\n")
heaps = [i for i, line in enumerate(maps) if line.endswith("[heap]")]
ranges = [[int(a, 16) for a in maps[i].split()[0].split("-")] for i in heaps]
flags = [next(l for l in maps[i:] if l.startswith("VmFlags")).split()[1:] for i in heaps]
huge = [l for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
flagged = any("hg" in f for f in flags)
print(runtime.huge_pages_advised(), ranges[-1][1] - ranges[0][0], flagged, huge[0].split()[1])
"""


def _huge_pages(**env) -> tuple[bool, int, bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _HUGE], capture_output=True, text=True, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    advised, heap, flagged, huge_kib = out.stdout.split()
    return advised == "True", int(heap), flagged == "True", int(huge_kib)


MADVISE = GLIBC and runtime.transparent_hugepage_mode() == "madvise"


@pytest.mark.skipif(not MADVISE, reason="glibc and transparent huge pages in madvise mode only")
def test_kept_heap_is_reserved_and_takes_huge_pages():
    advised, heap, flagged, huge_kib = _huge_pages()
    assert advised and flagged
    assert heap >= runtime.HEAP_RESERVE  # the reserve stays in the heap (under the trim threshold)
    # 256 MiB of tensors in a reserve that only its first page touched before the advice: all but
    # the regions at its edges are whole 2 MiB pages (the kernel may lack free huge pages only
    # under memory pressure)
    assert huge_kib >= 128 * 1024, huge_kib


@pytest.mark.skipif(not MADVISE, reason="glibc and transparent huge pages in madvise mode only")
def test_huge_pages_can_be_turned_off_by_the_environment():
    advised, heap, flagged, huge_kib = _huge_pages(LONGSSM_HUGE_PAGES="0")
    assert not advised and not flagged
    assert huge_kib == 0
    assert heap < runtime.HEAP_RESERVE  # no reserve either


@pytest.mark.skipif(not MADVISE, reason="glibc and transparent huge pages in madvise mode only")
def test_no_reserve_under_an_address_space_limit():
    # a gigabyte of reserved heap would count against `ulimit -v`
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (64 * 2**30, resource.RLIM_INFINITY)); "
        "from longssm import runtime; print(runtime.keep_freed_memory(), runtime.huge_pages_advised())"
    )
    assert _printed(code) == ["True", "False"]


def test_huge_pages_need_kept_memory_first():
    # a reserve freed under glibc's default trim threshold would go straight back to the kernel
    code = (
        "from longssm import runtime; print(runtime.advise_huge_pages(), "
        "runtime.huge_pages_advised())"
    )
    assert _printed(code) == ["False", "False"]


def test_set_cpu_threads_sets_torch_and_numba():
    before = torch.get_num_threads()
    try:
        runtime.set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        numba = pytest.importorskip("numba")
        assert numba.get_num_threads() == 1
    finally:
        runtime.set_cpu_threads(before)
