"""Every op dispatcher: ``path=`` each form that runs here == the naive form in float64 (outputs,
final state, gradients incl. the initial state); a path that cannot run here is a clear error."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from longssm.ops import causal_conv as causal_conv_op
from longssm.ops import diag_scan as diag_scan_op
from longssm.ops import longhorn as longhorn_op
from longssm.ops import selective_scan as selective_scan_op
from longssm.ops import ssd as ssd_op
from tests.ops import test_causal_conv, test_diag_scan, test_longhorn, test_selective_scan, test_ssd


def selective_scan_case(T):
    inp = test_selective_scan.make_inputs(2, T, 3, 4)
    return [inp[k] for k in test_selective_scan.NAMES], {"chunk_size": 8}


def longhorn_case(T):
    return test_longhorn.make_inputs(T), {"chunk_size": 8}


def ssd_case(T):
    inp = test_ssd.make_inputs(2, T, 4, 3, 2, 5)
    return list(inp.values()), {"chunk_size": 8}


def diag_scan_case(T):
    v = test_diag_scan.crandn(2, T, 3).requires_grad_()
    lam = test_diag_scan.stable_lam(3).requires_grad_()
    h0 = test_diag_scan.crandn(2, 3).requires_grad_()
    return [v, lam, h0], {"chunk_size": 8}


def causal_conv_case(T):
    return list(test_causal_conv.make_inputs(2, T, 3, 4).values()), {}


# op name -> (package, dispatcher, naive form, inputs(T) -> (positional tensors, keyword args))
OPS = {
    "selective_scan": (
        selective_scan_op,
        selective_scan_op.selective_scan,
        selective_scan_op.selective_scan_naive,
        selective_scan_case,
    ),
    "longhorn": (
        longhorn_op,
        longhorn_op.longhorn,
        longhorn_op.longhorn_naive,
        longhorn_case,
    ),
    "ssd": (ssd_op, ssd_op.ssd, ssd_op.ssd_naive, ssd_case),
    "diag_scan": (
        diag_scan_op,
        diag_scan_op.diag_scan,
        diag_scan_op.diag_scan_naive,
        diag_scan_case,
    ),
    "causal_conv": (
        causal_conv_op,
        causal_conv_op.causal_conv,
        causal_conv_op.causal_conv_naive,
        causal_conv_case,
    ),
}
CASES = [(op, path) for op, (pkg, *_) in OPS.items() for path in pkg.PATHS]


def real_view(t):
    return torch.view_as_real(t) if t.is_complex() else t


def grads(y, h, leaves):
    """Gradients of a fixed random linear loss on y and the final state w.r.t. ``leaves``."""
    g = torch.Generator().manual_seed(1)
    loss = 0.0
    for t in (y, h):
        t = real_view(t)
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("T", [1, 63])
@pytest.mark.parametrize("op,path", CASES, ids=[f"{o}-{p}" for o, p in CASES])
def test_each_path_matches_naive_in_float64(op, path, T):
    pkg, dispatch, naive, make = OPS[op]
    tensors, kwargs = make(T)
    try:
        pkg.resolve_path(path, *tensors)
    except ValueError as err:
        pytest.skip(str(err))
    y, h = dispatch(*tensors, output_final_state=True, path=path, **kwargs)
    y_ref, h_ref = naive(*tensors, output_final_state=True)
    assert_close(y, y_ref, name=f"{op} {path} y")
    assert_close(h, h_ref, name=f"{op} {path} final state")
    leaves = [t for t in tensors if t is not None]
    for i, (got, want) in enumerate(zip(grads(y, h, leaves), grads(y_ref, h_ref, leaves))):
        assert_close(got, want, name=f"{op} {path} grad {i} (last = initial state)")


@pytest.mark.parametrize("op", list(OPS))
def test_unknown_path_is_a_value_error_naming_the_paths(op):
    pkg, dispatch, _, make = OPS[op]
    tensors, _ = make(3)
    with pytest.raises(ValueError, match="path must be one of auto"):
        dispatch(*tensors, path="fastest")


def test_paths_that_cannot_run_here_are_value_errors(monkeypatch):
    inp = test_selective_scan.make_inputs(2, 5, 3, 4)
    scan_inputs = [inp[k] for k in test_selective_scan.NAMES]
    meta = torch.empty(2, 5, 3, device="meta")
    with pytest.raises(ValueError, match="'fused' is not available.*CPU tensors only"):
        selective_scan_op.resolve_path("fused", meta)
    with pytest.raises(ValueError, match="'fused' is not available.*CPU tensors only"):
        longhorn_op.resolve_path("fused", meta)
    with pytest.raises(ValueError, match="'fused' is not available.*CPU tensors only"):
        ssd_op.resolve_path("fused", torch.empty(2, 5, 3, 4, device="meta"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'triton' is not available"):
            selective_scan_op.selective_scan(*scan_inputs, path="triton")
        ssd_inputs, _ = ssd_case(5)
        with pytest.raises(ValueError, match="'fla' is not available"):
            ssd_op.ssd(*ssd_inputs, path="fla")
    monkeypatch.setattr(selective_scan_op, "numba_available", lambda: False)
    monkeypatch.setattr(longhorn_op, "numba_available", lambda: False)
    monkeypatch.setattr(ssd_op, "numba_available", lambda: False)
    with pytest.raises(ValueError, match="numba is not installed"):
        selective_scan_op.selective_scan(*scan_inputs, path="fused")
    with pytest.raises(ValueError, match="numba is not installed"):
        longhorn_op.longhorn(*longhorn_case(5)[0], path="fused")
    with pytest.raises(ValueError, match="numba is not installed"):
        ssd_op.ssd(*ssd_case(5)[0], path="fused")
    assert selective_scan_op.resolve_path("auto", inp["x"]) == "chunk"
    assert longhorn_op.resolve_path("auto", inp["x"]) == "chunk"
    assert ssd_op.resolve_path("auto", inp["x"]) == "chunk"


def test_auto_resolves_by_the_documented_rules():
    x = torch.zeros(2, 3, 4)
    fused = "fused" if selective_scan_op.numba_available() else "chunk"
    assert selective_scan_op.resolve_path("auto", x) == selective_scan_op.scan_path(x) == fused
    assert longhorn_op.resolve_path("auto", x) == fused
    assert ssd_op.resolve_path("auto", x) == fused
    assert diag_scan_op.resolve_path("auto", x) == "chunk"
    for pkg in (selective_scan_op, longhorn_op, ssd_op, diag_scan_op):
        assert pkg.PATHS[0] == "auto" and {"chunk", "naive"} <= set(pkg.PATHS)
        assert pkg.resolve_path("naive", x) == "naive"
