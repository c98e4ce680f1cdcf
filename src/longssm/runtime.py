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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
# systems (DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB): larger allocations stay mapped per allocation.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int): 2 GiB

_kept = False


def keep_freed_memory() -> bool:
    """Keep memory freed by tensors under 32 MiB in this process for reuse (glibc only).

    Sets glibc's mmap threshold to 32 MiB and its trim threshold out of reach. Returns True when
    applied (now or by an earlier call), False where it does not apply: not glibc, or
    ``LONGSSM_KEEP_FREED_MEMORY=0`` in the environment. Idempotent."""
    global _kept
    if _kept:
        return True
    if os.environ.get("LONGSSM_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # both: setting either one ends glibc's dynamic thresholds, so a trim threshold alone would
    # leave every allocation of 128 KiB or more mapped afresh (37,000 faults a step in case 3,
    # 1.5x slower)
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    _kept = True
    return True


def set_cpu_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch and, when it is installed, numba's parallel kernels (numba
    at most its pool's size); torch's and numba's pools compete for the cores otherwise."""
    import torch

    from longssm.ops import numba_available

    torch.set_num_threads(n)
    if numba_available():
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
