"""The numba building blocks of the fused kernels (``longssm.ops._numba``) against NumPy.

``lane_sum``, ``lane_dot`` and the ``lane_vector_ops`` compositions the kernels' intrinsics use (an
affine fused multiply-add, rounded products, the tree; four rows' sums at once) are LLVM vector
IR: they must give the bits of the
fixed pairwise tree written out in Python (same additions, same order, products rounded on their own:
not fused into the tree's first additions), in float32 and float64. ``stack_array`` must give a
zero-filled array private to each call; ``wide_vectors`` must leave results unchanged.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("numba")

from llvmlite import ir  # noqa: E402
from numba import njit  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from longssm.ops._numba import (  # noqa: E402
    FASTMATH,
    LANES,
    fast_softplus,
    lane_dot,
    lane_sum,
    lane_vector_ops,
    softplus_slope,
    stack_array,
    wide_vectors,
)

ROWS = 3


def tree(p):
    """The pairwise tree in the array's own dtype: q_i = p_i + p_(i+8), r_i = q_i + q_(i+4), ..."""
    p = list(p)
    while len(p) > 1:
        half = len(p) // 2
        p = [p[i] + p[i + half] for i in range(half)]
    return p[0]


@intrinsic
def _affine_dot(typingctx, p, q, c, r):
    """Σ_j (p_j + q_j c) r_j from ``lane_vector_ops``: fma(q, c, p), rounded products, the tree
    (the scan's reverse step forms ∂L/∂B this way)."""
    sig = p.dtype(p, q, c, r)

    def codegen(context, builder, signature, args):
        vec = lane_vector_ops(context, builder, signature.args[0].dtype)
        p_, q_, r_ = (
            context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 1, 3)
        )
        zero = ir.IntType(64)(0)
        affine = vec.fma(vec.load(q_, zero), vec.splat(args[2]), vec.load(p_, zero))
        return vec.sum(vec.product(affine, vec.load(r_, zero)))

    return sig, codegen


@njit(fastmath=FASTMATH)
def _sums(a, c):
    return lane_sum(a[0]), lane_dot(a[0], a[1]), _affine_dot(a[0], a[1], c, a[2])


@njit(fastmath=FASTMATH)
def _on_stack(x):
    wide_vectors()
    first = stack_array(ROWS, LANES, x.dtype)
    second = stack_array(ROWS, LANES, x.dtype)
    total = 0.0
    for i in range(ROWS):
        for j in range(LANES):
            total += first[i, j] + second[i, j]  # both zero-filled
            first[i, j] = x[j] * i
    for j in range(LANES):
        second[0, j] = first[2, j] + first[1, j]
    return total, second[0].copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_sums_equal_the_pairwise_tree_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    for trial in range(200):
        scale = 10.0 ** rng.integers(-4, 4, (3, LANES))  # mixed magnitudes: order matters
        a = (rng.standard_normal((3, LANES)) * scale).astype(dtype)
        c = dtype(rng.standard_normal())
        got = _sums(a, c)
        products = a[0] * a[1]  # rounded in dtype
        affine = np.array([_fma(a[1, j], c, a[0, j]) for j in range(LANES)], dtype)
        want = (tree(a[0]), tree(products), tree(affine * a[2]))
        for g, w in zip(got, want):
            assert g == w, (trial, got, want)


def _fma(x, y, z):
    """x·y + z computed exactly (fractions), then rounded to x's dtype (for float32 through
    float64: a double rounding that differs from one rounding with probability about 2^-29)."""
    exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    return type(x)(float(exact))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stack_array_is_zero_filled_and_private(dtype):
    x = np.arange(LANES, dtype=dtype)
    for _ in range(3):  # fresh zeros on every call, whatever the last call left on the stack
        total, row = _on_stack(x)
        assert total == 0.0
        np.testing.assert_array_equal(row, x * 2 + x * 1)


def test_kernel_caches_depend_on_the_primitives():
    """Every cached kernel's source stamp includes the SHA-256 of ``ops/_numba.py``: an edit of a
    primitive (inlined into the kernels) recompiles them instead of loading stale machine code."""
    import hashlib

    from numba.core.registry import CPUDispatcher

    from longssm.ops import _numba
    from longssm.ops.causal_conv import _fused_kernels as conv
    from longssm.ops.longhorn import _fused_kernels as longhorn
    from longssm.ops.selective_scan import _fused_kernels as scan

    with open(_numba.__file__, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    for module in (scan, longhorn, conv):
        kernels = [
            v
            for v in vars(module).values()
            if isinstance(v, CPUDispatcher) and v.py_func.__module__ == module.__name__
        ]
        assert len(kernels) >= 4, module.__name__
        for kernel in kernels:
            stamp = kernel._cache._cache_file._source_stamp
            assert isinstance(stamp, tuple) and stamp[1] == digest, (module.__name__, kernel)


@njit(fastmath=FASTMATH)
def _softplus_and_slope(x, out, slope):
    wide_vectors()
    for i in range(x.shape[0]):
        out[i] = fast_softplus(x[i])
        slope[i] = softplus_slope(x[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_and_its_slope_match_torch(dtype):
    """fast_softplus and softplus_slope against torch's F.softplus (beta 1, threshold 20) and its
    gradient, over [-120, 40] and at the edges: within 4 ulp (absolute: the smallest normal, where
    torch gives a subnormal and the kernels 0); inf and NaN pass through as torch's do."""
    import torch
    import torch.nn.functional as F

    x = np.concatenate(
        [np.linspace(-120, 40, 40001), [0.0, -0.0, 20.0, 19.9999, 20.0001, 1e-30, -1e-30]]
    ).astype(dtype)
    x = np.concatenate([x, np.array([np.inf, -np.inf, np.nan], dtype)])
    out, slope = np.empty_like(x), np.empty_like(x)
    _softplus_and_slope(x, out, slope)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    want = F.softplus(xt)
    (want_slope,) = torch.autograd.grad(want.sum(), xt)
    want, want_slope = want.detach().numpy(), want_slope.numpy()
    finfo = np.finfo(dtype)
    for got, ref in ((out, want), (slope, want_slope)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        keep = np.isfinite(ref)
        np.testing.assert_array_equal(got[~keep & ~np.isnan(ref)], ref[~keep & ~np.isnan(ref)])
        np.testing.assert_allclose(got[keep], ref[keep], rtol=4 * finfo.eps, atol=finfo.tiny)


def _sum4_kernel():
    """A numba function returning ``lane_vector_ops.sum4`` and ``sum`` of the four rows of a
    (4, LANES) array, built here from the IR helpers the kernels' intrinsics use."""
    from numba import types

    @intrinsic
    def sums(typingctx, rows, out4, out1):
        sig = types.void(rows, out4, out1)

        def codegen(context, builder, signature, args):
            r, o4, o1 = (
                context.make_array(t)(context, builder, a) for t, a in zip(signature.args, args)
            )
            vec = lane_vector_ops(context, builder, signature.args[0].dtype)
            i64 = ir.IntType(64)
            vectors = [vec.load(r.data, i64(k * LANES)) for k in range(4)]
            vec.add4_to(o4.data, vec.sum4(vectors))
            for k in range(4):
                vec.add_to(builder.gep(o1.data, [i64(k)]), vec.sum(vectors[k]))
            return context.get_dummy_value()

        return sig, codegen

    @njit
    def run(rows, out4, out1):
        sums(rows, out4, out1)

    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum4_gives_the_bits_of_the_pairwise_tree(dtype):
    """``lane_vector_ops.sum4`` (four rows' sums sharing shuffles, used by the scan's reverse step)
    == ``sum`` row by row == the tree written out in Python, bit for bit, added to what the output
    held (values of mixed magnitudes, so that a different order would round differently)."""
    rng = np.random.default_rng(0)
    run = _sum4_kernel()
    for _ in range(20):
        rows = (rng.standard_normal((4, LANES)) * 10.0 ** rng.integers(-6, 7, (4, LANES))).astype(
            dtype
        )
        start = rng.standard_normal(4).astype(dtype)
        out4, out1 = start.copy(), start.copy()
        run(rows, out4, out1)
        want = np.array([start[k] + tree(rows[k]) for k in range(4)], dtype)
        np.testing.assert_array_equal(out4, want)
        np.testing.assert_array_equal(out1, want)
