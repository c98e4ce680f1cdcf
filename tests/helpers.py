"""Shared test helpers: one ``assert_close`` that reports max absolute and relative error."""

from __future__ import annotations

import torch

TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.complex128: (1e-10, 1e-8),
    torch.float32: (1e-4, 1e-4),
    torch.complex64: (1e-4, 1e-4),
}


def assert_close(actual, expected, atol=None, rtol=None, name="tensor"):
    """Assert two tensors are close; tolerances default by dtype; the message gives the errors."""
    assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), name
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    d_atol, d_rtol = TOLERANCES.get(expected.dtype, (1e-4, 1e-4))
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a, e = actual.detach().to(expected.dtype), expected.detach()
    assert torch.isfinite(a).all(), f"{name}: actual has non-finite values"
    err = (a - e).abs()
    max_abs = err.max().item() if err.numel() else 0.0
    max_rel = (err / e.abs().clamp_min(1e-30)).max().item() if err.numel() else 0.0
    ok = bool((err <= atol + rtol * e.abs()).all())
    assert ok, (
        f"{name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e} (atol {atol}, rtol {rtol})"
    )


def linear_loss_grads(y, h, leaves, seed=1):
    """Gradients of a random linear loss on y and the final state h w.r.t. ``leaves``; the
    weights are drawn in float64 on the CPU (the same for every implementation compared)."""
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    wh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h)
    return torch.autograd.grad((y * wy).sum() + (h * wh).sum(), leaves)


# Per-mixer ModelConfig fields for a small test model (d_model 16); a registered mixer without an
# entry is tested with {"mixer": name, "d_state": 8}.
SMALL_MIXER_FIELDS = {
    "mamba": dict(d_state=4, d_conv=4),
    "mamba2": dict(d_state=8, d_conv=4, mixer_options={"headdim": 8, "chunk_size": 8}),
    "longhorn": dict(d_state=4, d_conv=4, mixer_options={"chunk_size": 8}),
    "lru": dict(d_state=8, mixer_options={"chunk_size": 8}),
    "gru": dict(),
    "lstm": dict(mixer_options={"hidden": 12}),
    # block_size 4 so that the test sequences (13 tokens, cut at 6) cut through a block
    "bst": dict(d_state=4, mixer_options={"block_size": 4}),
    "block-attention": dict(mixer_options={"block_size": 4}),
}


def small_mixer_fields(name: str) -> dict:
    """ModelConfig fields of a small model whose blocks are the registered mixer ``name``."""
    return {"mixer": name, **SMALL_MIXER_FIELDS.get(name, dict(d_state=8))}


def assert_states_close(a, b):
    """Every tensor of two model states (tuples of layer states) is close."""
    for la, lb in zip(a, b):
        for ta, tb in zip(la, lb):
            assert_close(ta, tb, name="state")


def assert_pieces_equal_one_pass(model, tokens, cut: int, name: str):
    """``model`` on ``tokens`` (batch, T) in one pass == the two pieces [:cut], [cut:] with the
    state carried (logits and final state). Returns (the second piece's logits, the state at cut)."""
    full, final = model(tokens)
    first, state = model(tokens[:, :cut])
    rest, carried = model(tokens[:, cut:], state)
    assert_close(torch.cat([first, rest], 1), full, name=f"{name}: pieces == one pass")
    assert_states_close(carried, final)
    return rest, state


def gradcheck_with_initial_state(layer, x) -> None:
    """``torch.autograd.gradcheck`` of a float64 layer's output and final state with respect to
    x and every field of a random initial state (complex fields as real pairs)."""
    init = layer.initial_state(x.shape[0], dtype=torch.float64)
    init = type(init)(*(torch.randn_like(t).requires_grad_() for t in init))

    def f(x, *fields):
        y, s = layer(x, type(init)(*fields))
        return (y, *(torch.view_as_real(t) if t.is_complex() else t for t in s))

    assert torch.autograd.gradcheck(f, (x, *init))


def assert_resume_equals_straight(run, out, common) -> None:
    """``longssm train`` for 3 steps straight (out/a) == 2 steps then ``--resume`` for the third
    (out/b): bitwise equal weights. ``run(args)`` runs the CLI and returns (code, stdout, stderr);
    ``common`` are the train arguments of both runs."""
    assert run(["train", "--out", str(out / "a"), *common, "--train.steps=3"])[0] == 0
    assert run(["train", "--out", str(out / "b"), *common, "--train.steps=2"])[0] == 0
    code, _, err = run(["train", "--out", str(out / "b"), "--resume", "--quiet", "--train.steps=3"])
    assert code == 0, err
    assert_runs_equal(out / "a", out / "b")


def assert_runs_equal(run_a, run_b) -> None:
    """The latest checkpoints of two run directories hold bitwise equal weights (resume tests)."""
    from longssm.checkpoint import load_model

    a, b = load_model(run_a)[0], load_model(run_b)[0]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def assert_same_bits_on_one_numba_thread(run) -> None:
    """``run()`` (a tuple of tensors) gives the same bits on one numba thread as on the caller's
    setting: the fused kernels' partial sums are reduced in a fixed order, whatever the thread
    count. The caller's setting is restored."""
    import numba

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, run(), strict=True):
        assert torch.equal(a, b)
