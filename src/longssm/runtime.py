"""Process-wide CPU settings of a training or evaluation process: thread pools and freed memory.

These change the whole process, so the library applies them only where it owns the process's
work: ``longssm.train.train``, the capability-task trainer and the ``longssm`` command. Code that
embeds the library calls them itself (or not).

``keep_freed_memory``: on Linux with glibc, a tensor of 128 KiB or more is memory of its own,
mapped from the kernel when allocated and given back when freed, unless glibc's dynamic
threshold has risen past its size; memory freed at the top of the heap is given back too (the
trim threshold). Every training step allocates and frees the same tensors again, so each step
touched fresh pages: about 2,000 page faults a step in the benchmark LM (case 3, T = 32 x 64),
at ~1.8 us each on the benchmark machine, 3-4% of the step. Keeping freed memory in the process
brings that to ~100. The cost: memory freed after a peak stays with the process (its peak
resident size is unchanged) until it exits. ``LONGSSM_KEEP_FREED_MEMORY=0`` turns it off.

Huge pages: where the kernel gives transparent huge pages to memory that asks for them (the
``madvise`` mode of ``/sys/kernel/mm/transparent_hugepage/enabled``, a common default), the
kept heap asks too: ``keep_freed_memory`` first grows the heap by ``HEAP_RESERVE`` (1 GiB of
address space, untouched: no resident memory) and gives it back to glibc's free pool, then marks
the whole heap ``MADV_HUGEPAGE``. Tensors allocated later take 2 MiB pages from it when first
touched: fewer TLB misses on the cold activations of a step. Measured on the benchmark machine
(case 3, T = 32 x 64, alternating processes, docs/kernels.md "Session 12"): the step 0.8-2.4 ms
(1-2.5%) faster, by sitting. Growth past the reserve gets ordinary pages; no reserve under an
address-space limit (``ulimit -v``). ``LONGSSM_HUGE_PAGES=0`` turns this part off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
# systems (DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB): larger allocations stay mapped per allocation.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536  # glibc's limit on mapped allocations, restored after the reserve
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int): 2 GiB
# Heap grown ahead for huge pages: address space only. Below the trim threshold, or glibc would
# hand the free top of the heap straight back.
HEAP_RESERVE = 2**30
_HUGE_PAGE = 2 * 2**20
_MADV_HUGEPAGE = 14  # linux/mman.h
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"

_kept = False
_huge = False


def keep_freed_memory() -> bool:
    """Keep memory freed by tensors under 32 MiB in this process for reuse (glibc only).

    Sets glibc's mmap threshold to 32 MiB and its trim threshold out of reach, then asks for huge
    pages on the heap (``advise_huge_pages``). Returns True when applied (now or by an earlier
    call), False where it does not apply: not glibc, or ``LONGSSM_KEEP_FREED_MEMORY=0`` in the
    environment. Idempotent."""
    global _kept
    if _kept:
        return True
    if os.environ.get("LONGSSM_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    # both: setting either one ends glibc's dynamic thresholds, so a trim threshold alone would
    # leave every allocation of 128 KiB or more mapped afresh (37,000 faults a step in case 3,
    # 1.5x slower)
    if not set_malloc_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD):
        return False
    _kept = True
    advise_huge_pages()
    return True


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes; both, which also ends their dynamic
    adjustment). False where not glibc or where glibc refuses a value."""
    libc = _glibc()
    if libc is None:
        return False
    return (
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    )


def transparent_hugepage_mode() -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or None
    where it cannot be read."""
    try:
        with open(_THP_MODE) as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


@functools.cache
def _glibc():
    """The C library with malloc's functions typed, or None where it is not glibc on Linux."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, malloc, free, madvise = libc.mallopt, libc.malloc, libc.free, libc.madvise
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    malloc.argtypes, malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
    free.argtypes, free.restype = (ctypes.c_void_p,), None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return libc


def huge_pages_advised() -> bool:
    """Whether this process's heap was marked for transparent huge pages (``keep_freed_memory``)."""
    return _huge


def advise_huge_pages() -> bool:
    """Grow the heap by ``HEAP_RESERVE`` of untouched address space and mark all of it
    ``MADV_HUGEPAGE`` (see the module docstring). Best effort and once per process: False where
    the kernel's mode is not ``madvise`` (``always`` needs nothing, ``never`` gives nothing), with
    ``LONGSSM_HUGE_PAGES=0``, before ``keep_freed_memory`` (a freed reserve would go back to the
    kernel), under a limit on the address space (``ulimit -v``), or when a step fails."""
    global _huge
    if _huge:
        return True
    if not _kept or os.environ.get("LONGSSM_HUGE_PAGES", "1").strip() == "0":
        return False
    if _address_space_limited():  # the reserve would take a gigabyte of the allowed space
        return False
    libc = _glibc()
    if libc is None or transparent_hugepage_mode() != "madvise":
        return False
    # One block from the heap (mmap off for the call): the heap grows by its size and only the
    # block's header page is touched; freed, it joins the top of the heap (kept: under the trim
    # threshold). Blocks under the mmap threshold instead touched a page every 16 MiB, each one
    # a 2 MiB region lost to small pages.
    if libc.mallopt(_M_MMAP_MAX, 0) != 1:
        return False
    try:
        block = libc.malloc(HEAP_RESERVE)
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    if not block:  # a data-size limit or strict overcommit: no reserve
        return False
    libc.free(block)
    heap = _heap_range()
    if heap is None:
        return False
    start = -(-heap[0] // _HUGE_PAGE) * _HUGE_PAGE
    end = heap[1] // _HUGE_PAGE * _HUGE_PAGE
    if end <= start or libc.madvise(start, end - start, _MADV_HUGEPAGE) != 0:
        return False
    _huge = True
    return True


def _address_space_limited() -> bool:
    """Whether this process has a finite soft limit on its virtual memory (RLIMIT_AS)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


def _heap_range() -> tuple[int, int] | None:
    """(start, end) addresses of this process's heap (the ``[heap]`` mapping), or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip().endswith("[heap]"):
                    start, end = line.split()[0].split("-")
                    return int(start, 16), int(end, 16)
    except OSError:
        pass
    return None


def set_cpu_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch and, when it is installed, numba's parallel kernels (numba
    at most its pool's size); torch's and numba's pools compete for the cores otherwise."""
    import torch

    from longssm.ops import numba_available

    torch.set_num_threads(n)
    if numba_available():
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
