"""Numba primitives shared by the fused CPU kernels (``selective_scan``, ``longhorn``).

Importing this module imports numba (about a second): only the kernel modules
(``ops/*/_fused_kernels.py``, themselves imported lazily on the first fused call) import it.
``numba_available`` (``longssm.ops._common``) checks for numba without importing it.

Shared layout of the kernels: one task per (batch row, block of ``LANES`` = 16 channels), the
block's state held as a small (d_state, LANES) array, states checkpointed every ``CHECKPOINT`` = 32
steps for the backward. Provided here: those constants, ``PREFETCH``, the one fast-math flag set
``FASTMATH``, ``prefetch`` (a cache-line hint), ``fast_exp`` (a vectorisable exp),
``lane_sum`` / ``lane_dot`` (deterministic pairwise sums over the 16 lanes,
as LLVM vector IR), ``wide_vectors`` (512-bit registers for the calling kernel), ``stack_array``
(small work rows on the kernel's stack) and ``lane_intrinsic`` (the signature and codegen of a
kernel's own vector-IR step over lane arrays). Tests: ``tests/ops/test_numba_primitives.py``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
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


# LLVM picks 256-bit vectors on AVX-512 CPUs by default (the "prefer-256-bit" tuning, chosen when
# 512-bit instructions lowered the clock of early AVX-512 parts). A kernel's lane loops are 16
# floats wide: one zmm register per row instead of two ymm, which halves the instructions of the
# forward scan (measured: 12.3 -> 6.0 ms at (64, 32, 256, 16)). The attributes act on the one
# function that calls ``wide_vectors()``; on a CPU without AVX-512 the widest legal width is used.
_WIDE_ATTRIBUTES = ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"')


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling kernel with 512-bit registers where the CPU has them.

    Adds the function attributes ``prefer-vector-width`` and ``min-legal-vector-width`` (512) to
    the LLVM function being compiled; no code is emitted. (llvmlite's attribute set accepts only
    its known flags, hence ``set.add``.)
    """
    sig = types.void()

    def codegen(context, builder, signature, args):
        for attribute in _WIDE_ATTRIBUTES:
            set.add(builder.function.attributes, attribute)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stack_pointer(typingctx, count, dtype):
    """A pointer to ``count`` (a compile-time constant) uninitialised elements of ``dtype`` on the
    calling function's stack (an alloca in its entry block)."""
    if not isinstance(count, types.IntegerLiteral) or not isinstance(
        dtype, (types.DType, types.NumberClass)
    ):
        return None
    element = dtype.dtype
    sig = types.CPointer(element)(count, dtype)

    def codegen(context, builder, signature, args):
        llty = context.get_value_type(element)
        return cgutils.alloca_once(builder, llty, size=count.literal_value)

    return sig, codegen


def stack_array(rows, columns, dtype):
    """A (rows, columns) array of ``dtype`` on the kernel's stack, zero-filled; rows and columns
    must be compile-time constants (module-level ints).

    LLVM knows that stack memory no other pointer reaches cannot alias the kernel's arrays (no
    runtime alias checks against them; no allocation per task). It does not, as hoped, keep a
    running sum held there in a register across the loop that updates it: the assembly still
    re-loads and re-stores it every iteration. Measured: scan forward 5.2-5.5 -> 4.9-5.0 ms at
    (64, 32, 256, 16), before the unsigned indices.
    """
    raise NotImplementedError("stack_array runs inside numba kernels only")


@overload(stack_array, inline="always", jit_options={"fastmath": FASTMATH})
def _stack_array_overload(rows, columns, dtype):
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(columns, types.IntegerLiteral)):
        return None
    count = rows.literal_value * columns.literal_value
    shape = (rows.literal_value, columns.literal_value)

    def impl(rows, columns, dtype):
        out = carray(_stack_pointer(count, dtype), shape)
        out[:] = 0
        return out

    return impl


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


# softplus and the sigmoid from one exp of -|x| (in (0, 1], never overflowing):
#   softplus(x) = max(x, 0) + log1p(exp(-|x|)),   sigmoid(x) = 1 / (1 + t) or t / (1 + t), t = exp(-|x|)
# with log1p(u) = 2 atanh(s) = 2 s (1 + s²/3 + s⁴/5 + ...), s = u / (2 + u) in (0, 1/3]: no
# cancellation for small u, and the series' truncation ((1/9)^K / (2K + 1) at K terms) is below
# one ulp at 7 terms in float32, 16 in float64. softplus keeps torch's threshold (x for x > 20,
# as F.softplus with beta 1, threshold 20), so the fused step sizes equal the torch form's.
SOFTPLUS_THRESHOLD = 20.0


def _softplus32(x):
    zero = np.float32(0.0)
    u = fast_exp(-x if x > zero else x)
    s = u / (np.float32(2.0) + u)
    s2 = s * s
    p = np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + np.float32(1.0)
    out = (x if x > zero else zero) + np.float32(2.0) * s * p
    return x if x > np.float32(SOFTPLUS_THRESHOLD) else out


def _softplus64(x):
    u = fast_exp(-x if x > 0.0 else x)
    s = u / (2.0 + u)
    s2 = s * s
    p = 1.0 / 31.0
    p = p * s2 + 1.0 / 29.0
    p = p * s2 + 1.0 / 27.0
    p = p * s2 + 1.0 / 25.0
    p = p * s2 + 1.0 / 23.0
    p = p * s2 + 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    out = (x if x > 0.0 else 0.0) + 2.0 * s * p
    return x if x > SOFTPLUS_THRESHOLD else out


def fast_softplus(x):
    """softplus(x) = log(1 + exp(x)) for float32 or float64 scalars inside the kernels, x itself
    above 20 (torch's threshold); vectorises (see the comment above ``_softplus32``)."""
    raise NotImplementedError("fast_softplus runs inside numba kernels only")


@overload(fast_softplus, jit_options={"fastmath": FASTMATH})
def _fast_softplus_overload(x):
    if x == types.float32:
        return _softplus32
    if x == types.float64:
        return _softplus64
    return None


def softplus_slope(x):
    """d softplus / dx at x: sigmoid(x), and 1 above 20 (the derivative of torch's thresholded
    softplus); float32 or float64 scalars inside the kernels."""
    raise NotImplementedError("softplus_slope runs inside numba kernels only")


@overload(softplus_slope, jit_options={"fastmath": FASTMATH})
def _softplus_slope_overload(x):
    if x not in (types.float32, types.float64):
        return None
    scalar = np.float32 if x == types.float32 else np.float64

    def impl(x):
        one = scalar(1.0)
        t = fast_exp(-x if x > scalar(0.0) else x)
        r = one / (one + t)
        sig = r if x >= scalar(0.0) else t * r
        return one if x > scalar(SOFTPLUS_THRESHOLD) else sig

    return impl


def _is_lane_row(p) -> bool:
    """A contiguous 1-d float32/float64 array (a row of ``LANES`` values)."""
    return (
        isinstance(p, types.Array)
        and p.ndim == 1
        and p.layout == "C"
        and p.dtype in (types.float32, types.float64)
    )


def _load_row(context, builder, row_type, row):
    """The first ``LANES`` values of a contiguous row as one LLVM vector."""
    arr = context.make_array(row_type)(context, builder, row)
    scalar = context.get_value_type(row_type.dtype)
    return builder.load(
        builder.bitcast(arr.data, ir.VectorType(scalar, LANES).as_pointer()),
        align=scalar.get_abi_size(context.target_data),
    )


def _rounded(builder, vector):
    """``vector`` behind an arithmetic fence: a product stays rounded on its own, never fused with
    the sum that follows into one multiply-add (LLVM fused them in float64)."""
    name = f"llvm.arithmetic.fence.v{LANES}{vector.type.element.intrinsic_name}"
    fence = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector.type, [vector.type]), name
    )
    return builder.call(fence, [vector])


def _tree_sum(builder, vector):
    """Σ of a ``LANES`` vector by the fixed pairwise tree: q_i = p_i + p_(i+8), r_i = q_i + q_(i+4),
    s_i = r_i + r_(i+2), sum = s_0 + s_1; each level is one add of the two halves of the last."""
    i32 = ir.IntType(32)
    width = LANES
    while width > 2:
        width //= 2
        mask = ir.VectorType(i32, width)
        low = builder.shuffle_vector(vector, vector, ir.Constant(mask, list(range(width))))
        high = builder.shuffle_vector(
            vector, vector, ir.Constant(mask, list(range(width, 2 * width)))
        )
        vector = builder.fadd(low, high)
    return builder.fadd(
        builder.extract_element(vector, i32(0)), builder.extract_element(vector, i32(1))
    )


def lane_arrays(arrays, ndims) -> bool:
    """Whether an intrinsic's array arguments can be read as 16-lane rows by ``lane_vector_ops``:
    numba arrays, C-contiguous, of one dtype (float32 or float64), with the given ranks."""
    return (
        all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
        and len({a.dtype for a in arrays}) == 1
        and arrays[0].dtype in (types.float32, types.float64)
        and [a.ndim for a in arrays] == list(ndims)
    )


def lane_intrinsic(arrays, ndims, emit, extra=()):
    """The (signature, codegen) pair of an intrinsic that returns nothing and takes C-contiguous
    lane arrays of one dtype (``lane_arrays`` with ``ndims``) followed by the numba types
    ``extra``; None where the arrays do not qualify. ``emit(builder, vec, structs, values)``
    writes the IR: ``vec`` the ``lane_vector_ops`` of the arrays' dtype, ``structs`` their array
    structs, ``values`` the LLVM values of the ``extra`` arguments."""
    if not lane_arrays(arrays, ndims):
        return None
    count = len(arrays)

    def codegen(context, builder, signature, args):
        structs = [
            context.make_array(t)(context, builder, a)
            for t, a in zip(signature.args[:count], args[:count])
        ]
        vec = lane_vector_ops(context, builder, signature.args[0].dtype)
        emit(builder, vec, structs, args[count:])
        return context.get_dummy_value()

    return types.void(*arrays, *extra), codegen


class lane_vector_ops:  # noqa: N801 (used like a module of helpers inside one codegen)
    """LLVM IR helpers on ``LANES``-wide vectors of one float dtype, for kernels' intrinsics.

    ``load(data, offset)`` / ``store(value, data, offset)``: the LANES elements at ``data +
    offset`` (data a pointer to the scalar, offset an i64 element count); ``splat(x)``; ``fma(a,
    b, c)`` = a b + c with one rounding (``llvm.fma``); ``product(p, q)``: p ⊙ q with each product
    rounded on its own; ``sum(x)``: ``_tree_sum``; ``sum4``: four rows' sums at once (same bits);
    ``add_to(ptr, x)``: *ptr += x (a scalar); ``add4_to``: four.
    """

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.scalar = context.get_value_type(dtype)
        self.type = ir.VectorType(self.scalar, LANES)
        self.align = self.scalar.get_abi_size(context.target_data)
        self.zero = ir.Constant(self.type, [0.0] * LANES)
        self._fma = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(self.type, [self.type] * 3),
            f"llvm.fma.v{LANES}{self.scalar.intrinsic_name}",
        )

    def _pointer(self, data, offset):
        return self.builder.bitcast(self.builder.gep(data, [offset]), self.type.as_pointer())

    def load(self, data, offset):
        return self.builder.load(self._pointer(data, offset), align=self.align)

    def store(self, value, data, offset):
        self.builder.store(value, self._pointer(data, offset), align=self.align)

    def splat(self, x):
        i32 = ir.IntType(32)
        one = self.builder.insert_element(ir.Constant(self.type, ir.Undefined), x, i32(0))
        return self.builder.shuffle_vector(
            one, one, ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        )

    def fma(self, a, b, c):
        return self.builder.call(self._fma, [a, b, c])

    def sum(self, x):
        """Σ of a 16-lane vector by ``_tree_sum``."""
        return _tree_sum(self.builder, x)

    def product(self, p, q):
        """p ⊙ q, each product rounded on its own (the terms of ``dot``)."""
        return _rounded(self.builder, self.builder.fmul(p, q))

    def sum4(self, rows):
        """The ``_tree_sum`` of each of four 16-lane vectors, as one 4-lane vector: the same
        additions on the same operands (same bits), two rows per vector add at the first level
        and four at the next ones, so 15 shuffles and adds replace 4 x 11."""
        b = self.builder
        i32 = ir.IntType(32)

        def pick(x, y, lanes):
            return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, len(lanes)), lanes))

        def level(x, y, low, high):
            return b.fadd(pick(x, y, low), pick(x, y, high))

        half = LANES // 2  # q_i = p_i + p_(i+8): rows (0, 1) and (2, 3) side by side
        q01 = level(rows[0], rows[1], [*range(half), *range(16, 16 + half)],
                    [*range(half, 16), *range(16 + half, 32)])  # fmt: skip
        q23 = level(rows[2], rows[3], [*range(half), *range(16, 16 + half)],
                    [*range(half, 16), *range(16 + half, 32)])  # fmt: skip
        # r_i = q_i + q_(i+4): four rows of 4 lanes
        lo = [k + 8 * g + 16 * h for h in (0, 1) for g in (0, 1) for k in range(4)]
        r = level(q01, q23, lo, [i + 4 for i in lo])
        s = level(
            r, r, [0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]
        )  # s_i = r_i + r_(i+2)
        return level(s, s, [0, 2, 4, 6], [1, 3, 5, 7])  # s_0 + s_1 of each row

    def add_to(self, ptr, x):
        self.builder.store(self.builder.fadd(self.builder.load(ptr), x), ptr)

    def add4_to(self, ptr, x):
        """ptr[0:4] += x (a 4-lane vector)."""
        b = self.builder
        at = b.bitcast(ptr, x.type.as_pointer())
        b.store(b.fadd(b.load(at, align=self.align), x), at, align=self.align)

    def lane_sums_into(self, n_state, state, first, second):
        """For n = 0 .. n_state-1 in order: (p, q) = state(n) (16-lane vectors), then first[n] +=
        Σ p and second[n] += Σ q (``first``, ``second`` pointers to scalars): four n at a time
        with ``sum4`` (the tree's shuffles shared), the rest one by one with ``sum`` (same bits).
        The reverse steps' sums of ∂L/∂C, ∂L/∂B over the lanes."""
        b = self.builder
        i64 = ir.IntType(64)
        n_fours = b.udiv(n_state, i64(4))
        with cgutils.for_range(b, n_fours) as loop:  # four state indices at a time
            n0 = b.mul(loop.index, i64(4))
            terms = [state(b.add(n0, i64(k))) for k in range(4)]
            self.add4_to(b.gep(first, [n0]), self.sum4([p for p, _ in terms]))
            self.add4_to(b.gep(second, [n0]), self.sum4([q for _, q in terms]))
        with cgutils.for_range(b, b.sub(n_state, b.mul(n_fours, i64(4)))) as loop:
            n = b.add(b.mul(n_fours, i64(4)), loop.index)
            p, q = state(n)
            self.add_to(b.gep(first, [n]), self.sum(p))
            self.add_to(b.gep(second, [n]), self.sum(q))


@intrinsic
def lane_sum(typingctx, p):
    """Σ_j p[j] over the 16 lanes of a row (``_tree_sum``'s fixed pairwise tree: deterministic);
    p is only read.

    Emitted as LLVM vector IR: written as scalars, LLVM left it as 15 scalar adds after 16 loads.
    Same additions in the same order as the scalar tree: same bits. Read only rows that were not
    stored in the last few dozen instructions: the tree's half-width loads cannot take their
    values from a pending full-width store, and wait until it is written (see ``lane_dot``).
    """
    if not _is_lane_row(p):
        return None
    sig = p.dtype(p)

    def codegen(context, builder, signature, args):
        return _tree_sum(builder, _load_row(context, builder, signature.args[0], args[0]))

    return sig, codegen


@intrinsic
def lane_dot(typingctx, p, q):
    """Σ_j p[j] q[j] over the 16 lanes of two rows: the products rounded, then ``_tree_sum``.

    The same value as storing the products in a row and calling ``lane_sum`` on it, without the
    store: a reverse-scan step that stored its products and summed them at once waited for each
    store to reach the cache (the largest stall of the selective scan's backward).
    """
    if not (_is_lane_row(p) and _is_lane_row(q) and p.dtype == q.dtype):
        return None
    sig = p.dtype(p, q)

    def codegen(context, builder, signature, args):
        vec = lane_vector_ops(context, builder, signature.args[0].dtype)
        pv = _load_row(context, builder, signature.args[0], args[0])
        qv = _load_row(context, builder, signature.args[1], args[1])
        return vec.sum(vec.product(pv, qv))

    return sig, codegen


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def sum_partials(part, out):
    """out (M,) = Σ_i part[i] over the tasks' partial sums part (tasks, M) (any float dtype; out
    float64): each column summed over i = 0, 1, ... in order, from 0. Called by a parallel kernel
    after its task loop, in place of a torch ``part.sum(0, dtype=torch.float64)`` by the caller
    (which first made a float64 copy of the partials)."""
    for m in range(out.shape[0]):
        out[m] = 0.0
    for i in range(part.shape[0]):
        row = part[i]
        for m in range(out.shape[0]):
            out[m] += row[m]


def cache_depends_on_primitives(namespace: dict) -> int:
    """Make the on-disk cache of every numba kernel in ``namespace`` (a kernel module's
    ``globals()``) depend on this file as well as on the kernel's own.

    numba keys a function's cache on its own source file's mtime and size only, but the
    primitives here are compiled into every kernel: after an edit of this file, kernels in other
    files would load stale machine code. Each cache's source stamp becomes (its own stamp, the
    SHA-256 of this file's bytes). Uses numba's private ``_cache._cache_file._source_stamp``; where that
    is missing (another numba), nothing changes. Returns the number of caches re-stamped.
    """
    import hashlib

    from numba.core.registry import CPUDispatcher

    with open(__file__, "rb") as f:
        own = hashlib.sha256(f.read()).hexdigest()
    count = 0
    for value in list(namespace.values()):
        if (
            not isinstance(value, CPUDispatcher)
            or value.py_func.__module__ != namespace["__name__"]
        ):
            continue
        cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)
        stamp = getattr(cache_file, "_source_stamp", None)
        if stamp is None:
            continue
        cache_file._source_stamp = (stamp, own)
        count += 1
    return count


__all__ = [
    "CHECKPOINT",
    "cache_depends_on_primitives",
    "FASTMATH",
    "LANES",
    "PREFETCH",
    "fast_exp",
    "lane_dot",
    "lane_arrays",
    "lane_sum",
    "prefetch",
    "stack_array",
    "sum_partials",
    "wide_vectors",
]
