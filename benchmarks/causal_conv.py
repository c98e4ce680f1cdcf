"""Causal depthwise convolution, forward + backward: F.conv1d (the layers' path before issue 19)
vs the fused numba kernels, float32, torch on 1 thread, the fused kernels on 1 and 2 numba threads.

Each case is (batch, T, C, K), the loss sum(y * g) + sum(new history) with g fixed, gradients to
x, weight, bias and the history. Cases are interleaved within each of ``--repeats`` rounds (so
machine noise hits all alike) after a warm-up; the page reports best, median and the interquartile
range, with the load average before and after (a shared 2-core machine: read the medians with the
load). Writes the JSON and the result page:

    PYTHONPATH=src python benchmarks/causal_conv.py
"""

from __future__ import annotations

from functools import partial

import interleaved
import numba
import torch
import torch.nn.functional as F
from interleaved import interleaved_times, summary

from longssm.ops.causal_conv import causal_conv_fused, causal_conv_torch, fused_cpu

SHAPES = [(16, 256, 512, 4), (64, 32, 256, 4)]
# then the benchmark LM's training step (its convolutions are (64, 32, 256, 4)) on each form


def make_case(shape, form, activation, fuse_silu, threads):
    B, T, C, K = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, C, generator=g, requires_grad=True)
    w = torch.randn(C, K, generator=g, requires_grad=True)
    b = torch.randn(C, generator=g, requires_grad=True)
    h = torch.randn(B, C, K - 1, generator=g, requires_grad=True)
    gy = torch.randn(B, T, C, generator=g)

    def step():
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        fused_cpu.THREADS = threads
        for t in (x, w, b, h):
            t.grad = None
        y, hf = form(x, w, b, h, True, activation if fuse_silu else None)
        if activation and not fuse_silu:
            y = F.silu(y)
        torch.autograd.backward((y, hf), (gy, torch.ones_like(hf)))

    return step


def cases(shape):
    out = {}
    for act in (None, "silu"):
        tag = "conv" if act is None else "conv+silu"
        out[(tag, "torch F.conv1d", 1)] = make_case(shape, causal_conv_torch, act, False, 1)
        for n in (1, 2):
            out[(tag, "fused", n)] = make_case(shape, causal_conv_fused, act, True, n)
            if act:
                out[(tag, "fused conv, F.silu", n)] = make_case(
                    shape, causal_conv_fused, act, False, n
                )
    return out


def lm_steps() -> dict:
    """One training step (forward, backward, AdamW) of the issue's benchmark LM (Mamba, d_model
    128, 4 layers, d_state 16, expand 2, d_conv 4, bytes; T = 32 x 64 rows) with the layers'
    convolution on each form."""
    import longssm.layers.conv as layer_conv
    from longssm.models import ModelConfig, SSMLanguageModel
    from longssm.ops.causal_conv import causal_conv

    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", d_model=128, n_layers=4, d_state=16, d_conv=4, vocab_size=257)
    model = SSMLanguageModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    tokens = torch.randint(0, 257, (64, 33))

    def with_form(form):
        def conv_op(*args, path="auto", **kwargs):
            return causal_conv(*args, path=form, **kwargs)

        def step():
            numba.set_num_threads(1)
            layer_conv.conv_op = conv_op
            logits, _ = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 257), tokens[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    return {
        ("LM step", "torch F.conv1d", 1): with_form("torch"),
        ("LM step", "fused", 1): with_form("fused"),
    }


def measure(repeats: int) -> list[dict]:
    rows = []
    groups = [(shape, partial(cases, shape)) for shape in SHAPES] + [((64, 32, 256, 4), lm_steps)]
    for shape, make in groups:
        for (op, form, threads), ts in interleaved_times(make(), repeats).items():
            rows.append(
                dict(shape=list(shape), op=op, form=form, numba_threads=threads, **summary(ts))
            )
    return rows


def page(result: dict) -> str:
    lines = [
        "# Fused causal depthwise convolution: timings",
        "",
        "Made by `PYTHONPATH=src python benchmarks/causal_conv.py` (data: "
        "`benchmarks/results/causal_conv.json`). Forward + backward (gradients to x, weight, "
        "bias, history), float32, torch 1 thread; ms per call over "
        f"{result['repeats']} interleaved rounds; load average "
        f"{result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after "
        f"({result['cpus']} CPUs, shared: the spread is the machine's).",
        "",
        "| (B, T, C, K) | op | form | numba threads | best | median | IQR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {tuple(r['shape'])} | {r['op']} | {r['form']} | {r['numba_threads']} | "
            f"{r['best_ms']:.2f} | {r['median_ms']:.2f} | "
            f"{r['iqr_ms'][0]:.2f} – {r['iqr_ms'][1]:.2f} |"
        )
    lines += [
        "",
        "`LM step`: one training step (forward, backward, AdamW; tokens/s = 2048 / time) of the "
        "issue's benchmark LM (Mamba, d_model 128, 4 layers, d_state 16, d_conv 4, bytes, "
        "T = 32 x 64 rows), its convolutions on each form; scan kernels on 1 numba thread.",
        "",
        "There is no paper number for this kernel (Mamba's CUDA `causal_conv1d` is GPU-only); "
        "the comparison is with torch's generic grouped convolution, which the layers ran "
        "before. See `docs/kernels.md` for the method and what the numbers decide.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    interleaved.main(__doc__.splitlines()[0], measure, page, repeats=7, name="causal_conv")


if __name__ == "__main__":
    main()
