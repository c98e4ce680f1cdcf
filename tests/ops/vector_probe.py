"""Compile the fused kernels' per-task functions from scratch and report their inner loops as JSON.

Run as a script by ``test_vectorisation.py`` in a fresh process with ``NUMBA_CACHE_DIR`` set to an
empty folder: numba shows no assembly for machine code loaded from its on-disk cache, and a
function compiled in a process that loaded its callees from the cache calls them instead of
inlining them. Each task function is called once on tiny arrays (that compiles it for the dtype),
then ``inspect_asm`` gives its x86 assembly.

An inner loop is the text between a label and the last backward jump to it that holds no other such
loop; a vector loop is an inner loop with at least one packed floating-point arithmetic
instruction (``addps``, ``vfmadd231pd``, ... on xmm, ymm or zmm registers, any vector width).
"""

from __future__ import annotations

import json
import re
import sys
import warnings

import numpy as np

LABEL = re.compile(r"^(\.?L\w+):")
JUMP = re.compile(r"^\s*j\w+\s+(\.?L\w+)\s*$")
PACKED = re.compile(
    r"^\s*v?(?:add|sub|mul|div|max|min|sqrt|f[n]?m(?:add|sub)\d*)p[sd]\s+.*%[xyz]mm", re.M
)
SCALAR = re.compile(
    r"^\s*v?(?:add|sub|mul|div|max|min|sqrt|f[n]?m(?:add|sub)\d*)s[sd]\s+.*%xmm", re.M
)


def inner_loops(asm: str) -> list[str]:
    """The text of every innermost loop (label ... backward jump to it) of an assembly listing."""
    lines = asm.splitlines()
    labels, loops = {}, {}
    for i, line in enumerate(lines):
        m = LABEL.match(line)
        if m:
            labels[m.group(1)] = i
        m = JUMP.match(line)
        if m and m.group(1) in labels:
            loops[m.group(1)] = (labels[m.group(1)], i)
    spans = sorted(loops.values())
    inner = [
        (a, b)
        for a, b in spans
        if not any((a, b) != (c, d) and a <= c and d <= b for c, d in spans)
    ]
    return ["\n".join(lines[a : b + 1]) for a, b in inner]


def width(body: str) -> str:
    """The widest register ("x", "y" or "z") of the packed arithmetic in a loop, "" if none."""
    regs = "".join(re.findall(r"%([xyz])mm", "\n".join(m.group(0) for m in PACKED.finditer(body))))
    return max(regs, key="xyz".index, default="")


def loop_report(asm: str) -> dict:
    """Inner loops with packed floating-point arithmetic (at any width: a kernel's main bodies run
    at 512 bits where ``wide_vectors`` lets them, LLVM's cost model keeps some at 256, and a main
    body's remainder loop is narrower), those among them with no scalar floating-point arithmetic
    ("clean": a loop LLVM unrolled into scalar code with a few packed operations mixed in is not),
    and loops with scalar arithmetic only; ``width`` is the widest vector register of any loop."""
    loops = inner_loops(asm)
    widths = [width(body) for body in loops]
    widest = max(widths, key=" xyz".index, default="")
    return {
        "width": widest + "mm" if widest else "none",
        "vector_loops": sum(1 for w in widths if w),
        "clean_vector_loops": sum(
            1 for body, w in zip(loops, widths) if w and not SCALAR.search(body)
        ),
        "scalar_loops": sum(1 for body, w in zip(loops, widths) if not w and SCALAR.search(body)),
    }


def conv_calls(dtype):
    from longssm.ops.causal_conv import _fused_kernels as k

    B, T, C, K = 2, 5, 20, 4
    x, y, gy, dx = (np.ones((B, T, C), dtype) for _ in range(4))
    wT, hist, dhist = (
        np.ones((K, C), dtype),
        np.ones((B, K - 1, C), dtype),
        np.ones((B, K - 1, C), dtype),
    )
    bias, dw, db = np.ones(C, dtype), np.ones((K, C), dtype), np.ones(C, dtype)
    k._forward_task(x, wT, bias, hist, y, True, 0, 0, T)
    k._backward_task(x, wT, bias, hist, gy, True, dx, dhist, dw, db, 0, 0, T)
    return {"conv_forward": k._forward_task, "conv_backward": k._backward_task}


def scan_calls(dtype):
    from longssm.ops.selective_scan import _fused_kernels as k

    B, T, D, N = 1, 5, 20, 4
    x, dt, y, gy, dx, ddt = (np.ones((B, T, D), dtype) for _ in range(6))
    AT, Bm, Cm = np.ones((N, D), dtype), np.ones((B, T, N), dtype), np.ones((B, T, N), dtype)
    Dv, h0, hT, gh, dh0 = np.ones(D, dtype), *(np.ones((B, D, N), dtype) for _ in range(4))
    ckpt = np.ones((B, 1, N, D), dtype)
    nblk = -(-D // k.LANES)
    dB, dC = np.ones((B, nblk, T, N), dtype), np.ones((B, nblk, T, N), dtype)
    dA, dD = np.ones((B, N, D), np.float64), np.ones((B, D), np.float64)
    z, dz = (np.ones((B, T, D), dtype) for _ in range(2))  # the gate (the LM's case)
    k._forward_task(x, dt, AT, Bm, Cm, Dv, h0, z, y, hT, ckpt, True, True, False, 0, 0)
    parts = (dB, dC, dA, dD)
    k._backward_task(x, dt, AT, Bm, Cm, Dv, ckpt, z, gy, gh, dx, ddt, dz, parts, dh0, True, False,
                     0, 0, 0)  # fmt: skip
    return {"scan_forward": k._forward_task, "scan_backward": k._backward_task}


def longhorn_calls(dtype):
    from longssm.ops.longhorn import _fused_kernels as k

    B, T, D, N = 1, 5, 20, 4
    x, eps, y, gy, dx, deps = (np.ones((B, T, D), dtype) for _ in range(6))
    kk, q = np.ones((B, T, N), dtype), np.ones((B, T, N), dtype)
    Dv, h0, hT, gh, dh0 = np.ones(D, dtype), *(np.ones((B, D, N), dtype) for _ in range(4))
    ckpt = np.ones((B, 1, N, D), dtype)
    dk, dq = np.ones((B, 1, T, N), dtype), np.ones((B, 1, T, N), dtype)
    dD = np.ones((B, D), np.float64)
    k._forward_task(x, eps, kk, q, Dv, h0, y, hT, ckpt, True, 0, 0)
    k._backward_task(x, eps, kk, q, Dv, ckpt, gy, gh, dx, deps, dk, dq, dD, dh0, 0, 0, 0)
    return {"longhorn_forward": k._forward_task, "longhorn_backward": k._backward_task}


def ssd_calls(dtype):
    from longssm.ops.ssd import _fused_kernels as k

    B, T, H, P, G, N = 1, 5, 2, 20, 1, 4
    x, y, gy, dx = (np.ones((B, T, H * P), dtype) for _ in range(4))
    dt, A, Dv = np.ones((B, T, H), dtype), np.ones(H, dtype), np.ones(H, dtype)
    Bm, Cm = np.ones((B, T, G, N), dtype), np.ones((B, T, G, N), dtype)
    h0, hT, gh, dh0 = (np.ones((B, H, P, N), dtype) for _ in range(4))
    ckpt = np.ones((B, 1, H, N, P), dtype)
    nblk = -(-P // k.LANES)
    dB, dC = np.ones((B, 1, T, G, N), dtype), np.ones((B, 1, T, G, N), dtype)
    ddt = np.ones((B, nblk, T, H), dtype)
    dA, dD = np.ones((B, H, nblk), np.float64), np.ones((B, H, nblk), np.float64)
    k._forward_task(x, dt, A, Bm, Cm, Dv, h0, y, hT, ckpt, True, 0, 0, 0)
    parts = (dB, dC, ddt, dA, dD)
    k._backward_task(x, dt, A, Bm, Cm, Dv, ckpt, gy, gh, dx, parts, dh0, 0, 0, 0, 0)
    return {"ssd_forward": k._forward_task, "ssd_backward": k._backward_task}


def s4d_calls(dtype):
    from longssm.ops.diag_scan import _s4d_fused_kernels as k

    B, T, H, N = 1, 5, 20, 4
    u, y, gy, du = (np.ones((B, T, H), dtype) for _ in range(4))
    lam, Bb, Cc = (np.ones((H, N, 2), dtype) for _ in range(3))
    Dv, h0, hT, gh, dh0 = np.ones(H, dtype), *(np.ones((B, H, N, 2), dtype) for _ in range(4))
    nblk = -(-H // k.LANES)
    ckpt = np.ones((B, nblk, 1, N, 2, k.LANES), dtype)
    prm_part, dD_part = np.ones((B, 6, N, H), np.float64), np.ones((B, H), np.float64)
    k._forward_task(u, lam, Bb, Cc, Dv, h0, y, hT, ckpt, True, 0, 0)
    k._backward_task(u, lam, Bb, Cc, Dv, ckpt, gy, gh, du, prm_part, dD_part, dh0, 0, 0)
    return {"s4d_forward": k._forward_task, "s4d_backward": k._backward_task}


def norm_calls(dtype):
    from longssm.ops.rms_norm import _fused_kernels as k

    R, D = 3, 40
    x, res, s, y, gy, gs, dx = (np.ones((R, D), dtype) for _ in range(7))  # with the residual add
    w, rstd, dw = np.ones(D, dtype), np.ones(R, dtype), np.ones(D, dtype)
    k._forward_task(x, res, w, 1e-5, y, s, rstd, True, 0, R)
    k._backward_task(x, w, rstd, gy, gs, dx, dw, 0, R)
    dz = np.ones((R, D), dtype)
    k._gated_forward_task(x, res, w, 1e-5, y, rstd, True, 0, R)  # Mamba-2's gated norm
    k._gated_backward_task(x, res, w, rstd, gy, dx, dz, dw, 0, R)
    return {
        "norm_forward": k._forward_task,
        "norm_backward": k._backward_task,
        "gated_norm_forward": k._gated_forward_task,
        "gated_norm_backward": k._gated_backward_task,
    }


def loss_calls(dtype):
    from longssm.ops.cross_entropy import _fused_kernels as k

    rows, V = 3, 40
    logits, dlogits = np.ones((rows, V), dtype), np.ones((rows, V), dtype)
    targets = np.zeros(rows, np.int64)
    lse, loss_rows = np.ones(rows, dtype), np.ones(rows, dtype)
    k._forward_task(logits, targets, lse, loss_rows, 0, rows)
    k._backward_task(logits, targets, lse, 0.5, dlogits, 0, rows)
    return {"loss_forward": k._forward_task, "loss_backward": k._backward_task}


def step_calls(dtype):
    from longssm.ops.step_size import _fused_kernels as k

    rows, R, D = 3, 4, 40
    low, WT = np.ones((rows, R), dtype), np.ones((R, D), dtype)
    bias, db = np.ones(D, dtype), np.ones(D, dtype)
    out, gout = (np.ones((rows, D), dtype) for _ in range(2))
    dlow = np.ones((rows, R), dtype)
    dWT = np.ones((R, D), dtype)
    k._forward_task(low, WT, bias, out, 0, rows)
    k._backward_task(low, WT, bias, gout, dlow, dWT, db, 0, rows)
    return {"step_size_forward": k._forward_task, "step_size_backward": k._backward_task}


def axpy(w, a, out):
    """out += w a: one loop that vectorises (the control that the probe sees vector loops)."""
    for c in range(out.shape[0]):
        out[c] += w[c] * a[c]


def axpy_early_exit(w, a, out):
    """As ``axpy``, with a data-dependent early exit that keeps the loop scalar (the control that
    the probe sees a de-vectorised loop)."""
    for c in range(out.shape[0]):
        if a[c] > 1e30:
            break
        out[c] += w[c] * a[c]


def control_calls(dtype):
    from numba import njit

    from longssm.ops._numba import FASTMATH

    kernels = {}
    for fn in (axpy, axpy_early_exit):
        kernels[f"control_{fn.__name__}"] = jit = njit(fastmath=FASTMATH)(fn)
        jit(*(np.ones(40, dtype) for _ in range(3)))
    return kernels


def main(dtypes: list[str]) -> dict:
    report = {}
    for name in dtypes:
        dtype = np.dtype(name)
        for calls in (control_calls, conv_calls, scan_calls, longhorn_calls, ssd_calls,
                      s4d_calls, norm_calls, step_calls, loss_calls):  # fmt: skip
            for kernel, fn in calls(dtype).items():
                sig = next(s for s in fn.signatures if str(s[0].dtype) == name)
                report.setdefault(kernel, {})[name] = loop_report(fn.inspect_asm(sig))
    return report


if __name__ == "__main__":
    # numba warns, and returns no assembly, for machine code loaded from its cache: an error here
    warnings.simplefilter("error")
    print(json.dumps(main(sys.argv[1:] or ["float32", "float64"])))
