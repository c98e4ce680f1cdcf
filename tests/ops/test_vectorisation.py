"""Vectorisation guard: the fused kernels' inner loops keep their SIMD instructions.

``vector_probe.py`` compiles the per-task functions of the fused causal convolution, the fused
selective scan, the fused RMSNorm (with its residual add, and Mamba-2's gated form), the fused
step sizes and the fused cross-entropy from scratch (a fresh process with an empty numba cache:
numba shows no assembly for cached machine code) and counts, in ``inspect_asm``'s x86 assembly,
the inner loops whose body holds packed floating-point arithmetic (any vector width: the kernels
ask for 512-bit registers with ``wide_vectors``, LLVM keeps some loops at 256 bits, and a vector
body's remainder loop is narrower). A loop that loses vectorisation (an extra array behind too
many alias checks, a data-dependent branch, a Python-style division with its zero check) is left
as a scalar loop and the count drops: with an early exit added to the convolution's tap loop, the
counts fell from 3 to 1 (forward) and 12 to 10 (backward); in the scan's state update from 6 to 5;
in RMSNorm's element-wise loops from 2 to 0 (forward) and 4 to 2 (backward) before session 7
added the residual add's loops (now 4 and 6); in the step sizes'
softplus loops (``ops/step_size``) from 4 to 2 (forward) and 8 to 6 (backward) (numba 0.68, an
AVX-512 CPU; the scans compiled with the output gate on). Both counts are asserted: all vector
loops, and the "clean" ones (no scalar floating-point arithmetic in the loop). The second catches
what the first does not: with a scalar libm call added to the scan backward's recomputation of the
states, LLVM unrolled that loop into scalar code with some packed operations mixed in (still a
vector loop: 6; clean: 6 -> 5). The scan's reverse step and its read-out of y are LLVM vector IR
since session 6 (``_reverse_step``, ``_state_readout``: no vectoriser to lose; they count among
the loops). The control pair (one loop with and without an early exit) shows the probe telling the
two apart on the machine at hand. float32 only: the training dtype (float64 runs the same loops at
half the lanes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

PROBE = os.path.join(os.path.dirname(__file__), "vector_probe.py")
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

# Vectorised inner loops per kernel (vector bodies and their remainders). conv forward: the tap
# FMA loop, the SiLU loop; conv backward: the recomputed v's tap loop, the SiLU derivative, ∂b,
# ∂w, ∂x, ∂history; the scans (compiled with the output gate on) add the gate's loops; RMSNorm: the
# row sums and the element-wise loops of each direction, and (session 7) the residual add's loop
# and the addition of ∂L/∂s; the cross-entropy: the forward's exp loop (the row's maximum and sum
# stay scalar: LLVM did not vectorise their 16 interleaved partials) and the backward's pass. The counts
# are those measured here (numba 0.68, LLVM's cost model): among them the state update over
# (n, lanes) of the scan's forward and the state recomputation of its backward (each counted as lost when
# de-vectorised, see the module docstring).
REQUIRED = {
    "conv_forward": 3,
    "conv_backward": 12,
    "scan_forward": 6,
    "scan_backward": 6,
    # Longhorn (session 8): its state update / recomputation and its reverse step over n as vector
    # IR (forward 1 clean of 3 vector loops, backward 2 clean of 6)
    "longhorn_forward": 1,
    "longhorn_backward": 2,
    # the SSD (Mamba-2, session 8): the state update / reverse step over n (vector IR) and the
    # lane loops of u, y, ∂x (the backward's fifth vector loop mixes in scalar code: 4 clean)
    "ssd_forward": 3,
    "ssd_backward": 4,
    # the fused S4D scan: the step over the modes (vector IR: forward's state update and read-out,
    # backward's recomputation and reverse step), the lane loops of u, y and ∂u, and (backward)
    # the float64 sums of each checkpoint block's parameter gradients
    "s4d_forward": 3,
    "s4d_backward": 6,
    "norm_forward": 4,
    "norm_backward": 6,
    # Mamba-2's gated norm (session 9): the gate row, the row sum and the output loop forward; the
    # gate-and-x̂ loop, the row sum, ∂y/∂z and the rest backward
    "gated_norm_forward": 3,
    "gated_norm_backward": 4,
    "step_size_forward": 4,
    # the backward's softplus-slope, ∂b and ∂W loops, and (session 11) ∂L/∂u's loops over the
    # column blocks (``_project_back``, vector IR: 8 -> 12)
    "step_size_backward": 12,
    "loss_forward": 2,
    "loss_backward": 2,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = dict(
        os.environ,
        NUMBA_CACHE_DIR=str(tmp_path_factory.mktemp("numba_cache")),
        PYTHONPATH=os.pathsep.join([os.path.abspath(SRC), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, PROBE, "float32"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_probe_tells_a_vector_loop_from_a_scalar_one(report):
    assert report["control_axpy"]["float32"]["vector_loops"] >= 1, report["control_axpy"]
    assert report["control_axpy_early_exit"]["float32"]["vector_loops"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("kernel", list(REQUIRED))
def test_kernel_inner_loops_are_vectorised(report, kernel):
    got = report[kernel]["float32"]
    for count in ("vector_loops", "clean_vector_loops"):
        assert got[count] >= REQUIRED[kernel], (
            f"{kernel}: {got[count]} {count.replace('_', ' ')}, expected >= {REQUIRED[kernel]} "
            f"({got}); a loop lost its SIMD instructions"
        )
