"""Numba primitives shared by the fused CPU kernels (``selective_scan``, ``longhorn``).

Importing this module imports numba (about a second): only the kernel modules
(``ops/*/_fused_kernels.py``, themselves imported lazily on the first fused call) import it.
``numba_available`` (``longssm.ops._common``) checks for numba without importing it.

Shared layout of the kernels: one task per (batch row, block of ``LANES`` = 16 channels), the
block's state held as a small (d_state, LANES) array, states checkpointed every ``CHECKPOINT`` = 32
steps for the backward. Provided here: those constants, ``PREFETCH``, the one fast-math flag set
``FASTMATH``, ``prefetch`` (a cache-line hint), ``fast_exp`` (a vectorisable exp) and
``lane_sum`` (a deterministic pairwise sum over the 16 lanes).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

LANES = 16  # lane_sum is written out for 16 lanes
CHECKPOINT = 32
PREFETCH = 4  # the forward asks for the input rows this many steps ahead
# The one fast-math flag: a * b + c may become one fused multiply-add (one rounding instead of
# two). No reassociation, no assumptions about NaN or inf: every sum keeps its order.
FASTMATH = {"contract"}

# exp(x) = 2^k · exp(r) with k = round(x / ln 2), r = x − k ln 2 (ln 2 split in a high part exact
# in few bits and a low correction), |r| <= ln(2) / 2; exp(r) by its Taylor series, long enough
# that the truncation is below one ulp (degree 7 for float32, 13 for float64); 2^k is built from
# its exponent bits. Unlike math.exp (a scalar libm call), this vectorises.
_LOG2E = 1.4426950408889634
_LN2_HI_32, _LN2_LO_32 = 0.693359375, -2.12194440e-4
_LN2_HI_64, _LN2_LO_64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
# Adding then subtracting 1.5 · 2^(mantissa bits) rounds to the nearest integer.
_ROUND_32, _ROUND_64 = 12582912.0, 6755399441055744.0


@intrinsic
def _bits_to_float(typingctx, bits):
    """Reinterpret an int32 (int64) as a float32 (float64): the exponent-bits trick for 2^k."""
    if bits == types.int32:
        sig, llty = types.float32(types.int32), ir.FloatType()
    elif bits == types.int64:
        sig, llty = types.float64(types.int64), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return sig, codegen


@intrinsic
def prefetch(typingctx, ary, i, j, k):
    """Ask the CPU to load the cache line of ary[i, j, k] (3-d array) ahead of use; no result.

    A task reads one 16-float row per time step, d_inner floats apart: the hardware prefetcher
    does not follow that stride, so each row would be a cache miss waited for in the time loop.
    """
    if not (isinstance(ary, types.Array) and ary.ndim == 3):
        return None
    sig = types.void(ary, i, j, k)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        arr = context.make_array(aryty)(context, builder, args[0])
        inds = [
            context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])
        ]
        ptr = cgutils.get_item_pointer(context, builder, aryty, arr, inds, wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read, high temporal locality, data cache
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def _exp32(x):
    # x is first clamped to [lo, hi] = [-88, 89], where k = -127 at lo gives exponent bits 0
    # (the result is +0: also below about -87.7, past the smallest normal) and k = 128 at hi gives
    # the bits of +inf (the result is inf from about 88.4 on). Both selects let a NaN through
    # (as max/min with the NaN-propagating operand order): it propagates through r and p.
    lo, hi = np.float32(-88.0), np.float32(89.0)
    xc = lo if x < lo else x
    xc = hi if xc > hi else xc
    k = (xc * np.float32(_LOG2E) + np.float32(_ROUND_32)) - np.float32(_ROUND_32)
    r = (xc - k * np.float32(_LN2_HI_32)) - k * np.float32(_LN2_LO_32)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    # numba widens int32 arithmetic to int64: narrow the exponent bits back before the cast.
    return p * _bits_to_float(np.int32((np.int32(k) + 127) << 23))


def _exp64(x):
    # As _exp32: k = -1023 at lo gives +0, k = 1024 at hi gives +inf.
    lo, hi = -709.0, 710.0
    xc = lo if x < lo else x
    xc = hi if xc > hi else xc
    k = (xc * _LOG2E + _ROUND_64) - _ROUND_64
    r = (xc - k * _LN2_HI_64) - k * _LN2_LO_64
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _bits_to_float((np.int64(k) + np.int64(1023)) << np.int64(52))


def fast_exp(x):
    """exp(x) for float32 or float64 scalars inside the kernels (see the comment above _exp32)."""
    raise NotImplementedError("fast_exp runs inside numba kernels only")


@overload(fast_exp, jit_options={"fastmath": FASTMATH})
def _fast_exp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64
    return None


@njit(cache=True, fastmath=FASTMATH)
def lane_sum(p):
    """Σ_j p[j] over the 16 lanes as a fixed pairwise tree (deterministic); p is only read.

    Written out for LANES = 16: the sums stay in registers (a loop over halving widths stored
    every level back into p and reloaded it).
    """
    q0, q1, q2, q3 = p[0] + p[8], p[1] + p[9], p[2] + p[10], p[3] + p[11]
    q4, q5, q6, q7 = p[4] + p[12], p[5] + p[13], p[6] + p[14], p[7] + p[15]
    r0, r1, r2, r3 = q0 + q4, q1 + q5, q2 + q6, q3 + q7
    return (r0 + r2) + (r1 + r3)


__all__ = ["CHECKPOINT", "FASTMATH", "LANES", "PREFETCH", "fast_exp", "lane_sum", "prefetch"]
