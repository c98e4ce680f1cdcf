"""GPU kernels == references: the Triton selective scan and fla's SSD (skipped without CUDA).

Every kernel is compared with the naive loop (outputs, final state and the gradients of a random
linear loss, the initial state's included). The Triton scan runs in float64 too and must match to
the float64 tolerance; fla multiplies in TF32, so its float32 results are compared with a float64
reference at a tolerance relative to the reference's largest entry. The input checks that need no
GPU run everywhere.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, linear_loss_grads
from longssm.ops._common import numba_available
from longssm.ops.selective_scan import (
    scan_path,
    selective_scan,
    selective_scan_naive,
    selective_scan_triton,
    triton_available,
)
from longssm.ops.ssd import fla_available, ssd, ssd_fla, ssd_naive, ssd_path
from tests.ops import test_ssd
from tests.ops.test_selective_scan import NAMES, make_inputs, run

CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(
    not (CUDA and triton_available()), reason="needs a CUDA device and triton"
)
needs_fla = pytest.mark.skipif(
    not (CUDA and fla_available()), reason="needs a CUDA device and fla (pip install fla-core)"
)

# Channel counts below, at and across the 16-channel blocks; T across the 32-step checkpoints.
SCAN_SHAPES = [(2, 1, 3, 4), (2, 7, 16, 4), (1, 63, 37, 3), (2, 500, 5, 2), (3, 130, 64, 16)]


def to_device(inp: dict, device, dtype=None) -> dict:
    """Fresh leaves on ``device`` (optionally cast), requiring grad where the originals did."""
    out = {}
    for k, v in inp.items():
        if v is None:
            out[k] = None
            continue
        w = v.detach().to(device=device, dtype=dtype or v.dtype)
        out[k] = w.requires_grad_(v.requires_grad)
    return out


def assert_close_to_scale(actual, expected, rel, name):
    """max |actual - expected| <= rel * max |expected| (for TF32 kernels)."""
    err = (actual.detach().double() - expected.detach().double()).abs().max().item()
    scale = expected.detach().double().abs().max().item()
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    assert err <= rel * scale + 1e-6, f"{name}: max abs err {err:.3e} vs scale {scale:.3e}"


# --- Triton selective scan -------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("block_d", [16, 4])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-h0"])
@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=[f"T{s[1]}-d{s[2]}" for s in SCAN_SHAPES])
def test_triton_scan_matches_naive_float64(shape, with_h0, block_d):
    inp = to_device(make_inputs(*shape, with_h0=with_h0), "cuda")
    y, h = run(selective_scan_triton, inp, block_d=block_d)
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    names = [k for k in NAMES if inp[k] is not None]
    leaves = [inp[k] for k in names]
    for name, g, g_ref in zip(
        names, linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    ):
        assert_close(g, g_ref, name=f"d loss / d {name}")


@needs_triton
def test_triton_scan_with_a_wider_backward_block():
    # 200 channels in blocks of 2 forward; the backward widens its blocks to 4 (<= 64 per row).
    inp = to_device(make_inputs(2, 70, 200, 8), "cuda")
    y, h = run(selective_scan_triton, inp, block_d=2)
    y_ref, h_ref = run(selective_scan_naive, inp)
    leaves = [inp[k] for k in NAMES]
    for name, g, g_ref in zip(
        NAMES, linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    ):
        assert_close(g, g_ref, name=f"d loss / d {name}")


@needs_triton
def test_triton_scan_runs_long_rows_in_pieces(monkeypatch):
    from longssm.ops.selective_scan import triton_gpu

    # A small limit makes a 150-step sequence run as pieces of 64, 64 and 22 steps.
    monkeypatch.setattr(triton_gpu, "INT32_LIMIT", 64 * 20 + 1)
    assert triton_gpu.piece_length(150, 20, 4) == 64
    inp = to_device(make_inputs(2, 150, 20, 4), "cuda")
    y, h = run(selective_scan_triton, inp)
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")
    leaves = [inp[k] for k in NAMES]
    for name, g, g_ref in zip(
        NAMES, linear_loss_grads(y, h, leaves), linear_loss_grads(y_ref, h_ref, leaves)
    ):
        assert_close(g, g_ref, name=f"d loss / d {name}")


def test_piece_length_keeps_row_offsets_within_int32():
    from longssm.ops.selective_scan.triton_gpu import CHUNK, INT32_LIMIT, piece_length

    assert piece_length(2048, 512, 16) == 2048
    for T, d_inner, d_state in ((2**21, 1024, 16), (2**20, 4096, 64), (10**6, 3000, 16)):
        piece = piece_length(T, d_inner, d_state)
        assert piece % CHUNK == 0 and piece < T
        assert piece * max(d_inner, d_state) < INT32_LIMIT
        assert -(-piece // CHUNK) * d_inner * d_state < INT32_LIMIT
        assert 2 * piece * d_inner >= INT32_LIMIT or -(-2 * piece // CHUNK) * d_inner * d_state >= INT32_LIMIT


def test_backward_block_bounds_the_number_of_programs_per_row():
    from longssm.ops.selective_scan.triton_gpu import MAX_BACKWARD_BLOCKS, backward_block_d

    assert backward_block_d(512, 8) == 8
    assert backward_block_d(200, 2) == 4
    for d_inner in (1, 63, 64, 65, 512, 1536, 5000):
        for block in (1, 4, 8, 32):
            wide = backward_block_d(d_inner, block)
            assert wide >= block and wide & (wide - 1) == 0
            assert -(-d_inner // wide) <= MAX_BACKWARD_BLOCKS


@needs_triton
def test_triton_scan_float32_and_bfloat16_against_float64_reference():
    ref = to_device(make_inputs(2, 300, 48, 16), "cuda")
    y_ref, h_ref = run(selective_scan_naive, ref)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        inp = to_device(ref, "cuda", dtype)
        y, h = run(selective_scan_triton, inp)
        assert y.dtype == dtype and h.dtype == torch.float32
        assert_close_to_scale(y, y_ref, tol, f"y ({dtype})")
        assert_close_to_scale(h, h_ref, tol, f"final_state ({dtype})")


@needs_triton
def test_triton_is_the_cuda_dispatch_and_mamba_layer_agrees_with_chunk():
    from longssm.layers.mamba import Mamba

    inp = to_device(make_inputs(2, 40, 8, 4), "cuda")
    assert scan_path(inp["x"], inp["h0"]) == "triton"
    y, h = run(selective_scan, inp)
    y_ref, h_ref = run(selective_scan_naive, inp)
    assert_close(y, y_ref, name="dispatched y")
    torch.manual_seed(0)
    layer = Mamba(d_model=32, d_state=16, scan="auto").cuda().double()
    x = torch.randn(2, 70, 32, dtype=torch.float64, device="cuda")
    out_auto, state_auto = layer(x)
    layer.scan = "chunk"
    out_chunk, state_chunk = layer(x)
    assert_close(out_auto, out_chunk, name="Mamba output (triton vs chunk)")
    assert_close(state_auto.ssm, state_chunk.ssm, name="Mamba state (triton vs chunk)")


def test_triton_scan_refuses_cpu_tensors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inp = make_inputs(1, 3, 2, 2)
    with pytest.raises(ValueError, match="CUDA"):
        run(selective_scan_triton, inp)
    assert scan_path(inp["x"]) != "triton"


def test_triton_scan_rejects_bad_block_and_shapes():
    inp = make_inputs(1, 3, 2, 2)
    inp["B"] = inp["B"][:, :, :1]
    with pytest.raises(ValueError, match="B must have shape"):
        run(selective_scan_triton, inp)


# --- fla SSD ---------------------------------------------------------------------------------

SSD_SHAPES = [(2, 1, 2, 8, 1, 16), (2, 100, 4, 16, 2, 16), (1, 257, 2, 64, 1, 64)]
SSD_IDS = [f"T{s[1]}-H{s[2]}-P{s[3]}" for s in SSD_SHAPES]


def fla_backward_ok() -> bool:
    from longssm.ops.ssd import fla_backward_supported

    return CUDA and fla_available() and fla_backward_supported(torch.device("cuda"))


needs_fla_backward = pytest.mark.skipif(
    not fla_backward_ok(), reason="fla's backward is refused here (Hopper GPU with Triton < 3.7.1)"
)


def fla_and_reference(shape, with_state):
    ref = to_device(test_ssd.make_inputs(*shape, with_state=with_state), "cuda")
    return to_device(ref, "cuda", torch.float32), ref


# fla autotunes (and compiles) its kernels per shape: few shapes keep this file near a minute.
@needs_fla
@pytest.mark.parametrize(
    ("shape", "with_state"), [(SSD_SHAPES[0], False), (SSD_SHAPES[1], True), (SSD_SHAPES[2], True)]
)
def test_fla_ssd_forward_matches_naive(shape, with_state):
    inp, ref = fla_and_reference(shape, with_state)
    with torch.no_grad():
        y, h = ssd_fla(**inp, output_final_state=True)
        y_ref, h_ref = ssd_naive(**ref, output_final_state=True)
    assert_close_to_scale(y, y_ref, 5e-3, "y")
    assert_close_to_scale(h, h_ref, 5e-3, "final_state")


@needs_fla
@needs_fla_backward
@pytest.mark.parametrize("shape", SSD_SHAPES[1:], ids=SSD_IDS[1:])
def test_fla_ssd_gradients_match_naive(shape):
    inp, ref = fla_and_reference(shape, True)
    y, h = ssd_fla(**inp, output_final_state=True)
    y_ref, h_ref = ssd_naive(**ref, output_final_state=True)
    names = [k for k, v in inp.items() if v is not None]
    grads = linear_loss_grads(y, h, [inp[k] for k in names])
    grads_ref = linear_loss_grads(y_ref, h_ref, [ref[k] for k in names])
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close_to_scale(g, g_ref, 5e-3, f"d loss / d {name}")


@needs_fla
def test_fla_dispatch_and_mamba2_layer_agrees_with_chunk():
    from longssm.layers.mamba2 import Mamba2

    inp, _ = fla_and_reference((1, 20, 2, 8, 1, 16), True)
    with torch.no_grad():
        assert ssd_path(inp["x"], inp["initial_state"]) == "fla"
        assert ssd_path(inp["x"].double()) == "chunk"
        y, _ = ssd(**inp)
        y_ref, _ = ssd_naive(**inp)
    assert_close_to_scale(y, y_ref, 5e-3, "dispatched y")
    assert ssd_path(inp["x"], inp["initial_state"]) == "chunk"  # inputs require grad: training
    torch.manual_seed(0)
    layer = Mamba2(d_model=64, d_state=16, headdim=16, scan="auto").cuda()
    x = torch.randn(2, 90, 64, device="cuda")
    with torch.no_grad():
        out_auto, state_auto = layer(x)
        layer.scan = "chunk"
        out_chunk, state_chunk = layer(x)
    assert_close_to_scale(out_auto, out_chunk, 5e-3, "Mamba-2 output (fla vs chunk)")
    assert_close_to_scale(state_auto.ssm, state_chunk.ssm, 5e-3, "Mamba-2 state (fla vs chunk)")


def test_fla_ssd_refuses_cpu_tensors():
    inp = {k: (v.detach() if v is not None else None)
           for k, v in test_ssd.make_inputs(1, 4, 2, 2, 1, 3).items()}  # fmt: skip
    with pytest.raises(ValueError, match="CUDA"):
        ssd_fla(**inp)
    assert ssd_path(inp["x"]) == ("fused" if numba_available() else "chunk")
