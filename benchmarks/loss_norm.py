"""The fused cross-entropy and the residual add fused into RMSNorm (session 7), forward +
backward: torch's forms vs the fused numba kernels, float32, torch on 1 thread, numba on its
default; then the benchmark LM's training step with each of the two on or off.

Op cases: cross-entropy of (rows, V) logits (torch: ``F.cross_entropy``); the residual add then
RMSNorm of (rows, D) (torch's add, then the fused RMSNorm as before: ``add_rms_norm_naive`` with
the norm's fused kernels) vs ``add_rms_norm_fused``; losses with fixed random weights, gradients
to every input. Cases are interleaved within each of ``--repeats`` rounds after a warm-up; the
page reports best, median and interquartile range with the load average. Writes the JSON and
the result page:

    PYTHONPATH=src python benchmarks/loss_norm.py
"""

from __future__ import annotations

import interleaved
import torch
import torch.nn.functional as F
from interleaved import case_rows, case_table

from longssm.ops.cross_entropy import cross_entropy_fused
from longssm.ops.rms_norm import add_rms_norm_fused, rms_norm_fused

LOSS_CASES = [(2048, 257), (4096, 257)]  # the benchmark LM (T = 32 x 64), case 7 (256 x 16)
NORM_CASES = [(2048, 128), (4096, 256)]


def loss_step(rows, V, form):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, V, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, V, (rows,), generator=g)

    def step():
        logits.grad = None
        form(logits, targets).backward()

    return step


def add_then_norm(x, r, w, eps):
    s = x + r
    return s, rms_norm_fused(s, w, eps)


def norm_step(rows, D, form):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(rows, D, generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(D, generator=g, requires_grad=True)
    gs, gy = torch.randn(rows, D, generator=g), torch.randn(rows, D, generator=g)

    def step():
        for t in (x, r, w):
            t.grad = None
        torch.autograd.backward(form(x, r, w, 1e-5), (gs, gy))

    return step


LM_VARIANTS = {  # (fused cross-entropy, fused residual add)
    "before (torch loss, separate add)": (False, False),
    "fused loss": (True, False),
    "fused add + norm": (False, True),
    "both (now)": (True, True),
}


def lm_step(fused_loss: bool, fused_add: bool):
    """One training step (forward, backward, AdamW) of the issue-19 benchmark LM (Mamba, d_model
    128, 4 layers, d_state 16, expand 2, d_conv 4, bytes; T = 32 x 64)."""
    import longssm.models.norms as norms
    from longssm.models import ModelConfig, SSMLanguageModel
    from longssm.ops.cross_entropy import cross_entropy
    from longssm.ops.rms_norm import add_rms_norm
    from longssm.train.optim import adamw

    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", d_model=128, n_layers=4, d_state=16, d_conv=4, vocab_size=257)
    model = SSMLanguageModel(cfg).train()
    opt = adamw(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 257, (64, 33), generator=torch.Generator().manual_seed(0))
    loss_of = cross_entropy if fused_loss else F.cross_entropy

    def step():
        norms.add_rms_norm = add_rms_norm if fused_add else add_then_norm
        logits, _ = model(tokens[:, :-1])
        loss = loss_of(logits.reshape(-1, 257), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(repeats: int) -> list[dict]:
    import longssm.models.norms as norms

    original = norms.add_rms_norm
    groups = [
        (f"cross-entropy ({rows}, {V})",
         {"torch (F.cross_entropy)": loss_step(rows, V, F.cross_entropy),
          "fused": loss_step(rows, V, cross_entropy_fused)})
        for rows, V in LOSS_CASES
    ] + [
        (f"add + RMSNorm ({rows}, {D})",
         {"torch add + fused norm": norm_step(rows, D, add_then_norm),
          "fused": norm_step(rows, D, add_rms_norm_fused)})
        for rows, D in NORM_CASES
    ]  # fmt: skip
    groups.append(("LM step T=32 x 64", {k: lm_step(*v) for k, v in LM_VARIANTS.items()}))
    try:
        return case_rows(groups, repeats)
    finally:
        norms.add_rms_norm = original


def page(result: dict) -> str:
    lines = case_table(
        "Fused cross-entropy and residual add + RMSNorm: timings",
        "loss_norm",
        "Forward + backward",
        result,
    )
    lines += [
        "",
        "`LM step`: one training step (forward, backward, AdamW) of the issue-19 benchmark LM "
        "(Mamba, d_model 128, 4 layers, d_state 16, expand 2, d_conv 4, bytes, T = 32 x 64 "
        "rows), with the loss on torch's form or the fused one and the residual adds separate "
        "or inside the norms. No paper number: Mamba's reference code fuses the residual add "
        "into its Triton layer norm (`fused_add_norm`) on GPUs; the loss is torch's there. See "
        "`src/longssm/ops/cross_entropy/README.md`, `src/longssm/ops/rms_norm/README.md` and "
        "`docs/kernels.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    interleaved.main(__doc__.splitlines()[0], measure, page, repeats=25, name="loss_norm")


if __name__ == "__main__":
    main()
