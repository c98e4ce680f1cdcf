"""Mamba's step sizes Δ = softplus(u Wᵀ + b), forward + backward: the torch form (F.linear with
K = R, then F.softplus: the layers' path before session 6) vs the fused numba kernels, float32,
torch on 1 thread, numba on its default; then the benchmark LM's training step with its Δ on each
form.

Each op case is (rows..., R, D), the loss sum(Δ * g) with g fixed, gradients to u, W and b. Cases
are interleaved within each of ``--repeats`` rounds after a warm-up (machine noise hits all alike);
the page reports best, median and interquartile range, with the load average before and after.
Writes the JSON and the result page:

    PYTHONPATH=src python benchmarks/step_size.py
"""

from __future__ import annotations

import interleaved
import torch
import torch.nn.functional as F
from interleaved import case_rows, case_table

from longssm.ops.step_size import step_size_fused, step_size_naive

CASES = [((64, 32), 8, 256), ((2, 1024), 8, 256), ((16, 256), 16, 512)]
FORMS = {"torch (F.linear + F.softplus)": step_size_naive, "fused": step_size_fused}


def op_step(rows, R, D, form):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(*rows, R, generator=g, requires_grad=True)
    W = (torch.randn(D, R, generator=g) * R**-0.5).requires_grad_()
    b = (torch.randn(D, generator=g) - 4).requires_grad_()  # Δ ≈ 0.02, as Mamba's init
    gy = torch.randn(*rows, D, generator=g)

    def step():
        for t in (u, W, b):
            t.grad = None
        form(u, W, b).backward(gy)

    return step


def lm_step(form_name: str):
    """One training step (forward, backward, AdamW) of the issue-19 benchmark LM (Mamba, d_model
    128, 4 layers, d_state 16, expand 2, d_conv 4, bytes; T = 32 x 64) with Δ on one form."""
    import longssm.layers.mamba as mamba_layer
    from longssm.models import ModelConfig, SSMLanguageModel
    from longssm.train.optim import adamw

    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", d_model=128, n_layers=4, d_state=16, d_conv=4, vocab_size=257)
    model = SSMLanguageModel(cfg).train()
    opt = adamw(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 257, (64, 33), generator=torch.Generator().manual_seed(0))
    form = FORMS[form_name]

    def step():
        mamba_layer.step_size = lambda u, w, b, path="auto": form(u, w, b)
        # the layer's separate calls, where Δ is the ``step_size`` op: the one-node inner path
        # (``layers.mamba_inner``, the default since session 7) calls the fused kernels directly,
        # so with it both rows ran the same code (found in session 11)
        mamba_layer.fusable = lambda *args: False
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 257), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(repeats: int) -> list[dict]:
    import longssm.layers.mamba as mamba_layer

    original, original_fusable = mamba_layer.step_size, mamba_layer.fusable
    groups = [
        (f"{rows} R={R} D={D}", {name: op_step(rows, R, D, f) for name, f in FORMS.items()})
        for rows, R, D in CASES
    ]
    groups.append(("LM step T=32 x 64", {name: lm_step(name) for name in FORMS}))
    try:
        return case_rows(groups, repeats)
    finally:
        mamba_layer.step_size, mamba_layer.fusable = original, original_fusable


def page(result: dict) -> str:
    lines = case_table(
        "Fused step sizes Δ = softplus(u Wᵀ + b): timings",
        "step_size",
        "Forward + backward (gradients to u, W, b)",
        result,
    )
    lines += [
        "",
        "`LM step`: one training step (forward, backward, AdamW) of the issue-19 benchmark LM "
        "(Mamba, d_model 128, 4 layers, d_state 16, expand 2, d_conv 4, bytes, T = 32 x 64 "
        "rows) with its four layers' Δ on each form, on the layer's separate calls (the one-node "
        "inner path of the default calls the fused kernels directly; before session 11 both rows "
        "ran it, so they timed the same code).",
        "",
        "There is no paper number for this op: Mamba's CUDA kernel adds the bias and applies "
        "softplus inside its scan (`delta_bias`, `delta_softplus`) and leaves the rank-R "
        "projection to a matmul; on the CPU that matmul (K = 8) runs far from the machine's "
        "rate, so the fused form takes the projection too. See `src/longssm/ops/step_size/"
        "README.md` and `docs/kernels.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    interleaved.main(__doc__.splitlines()[0], measure, page, repeats=25, name="step_size")


if __name__ == "__main__":
    main()
