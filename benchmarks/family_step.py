"""One training step of every mixer family at a realistic size: throughput, FLOPs, profile.

Used by ``benchmarks/run.py`` case 7 (tokens/s and the matmul-floor ratio per family, each row in a
fresh process) and on its own to profile one family's step:

    PYTHONPATH=src python benchmarks/family_step.py --mixer s5 [--threads 1] [--out prof.json]

Sizes (``FAMILY_SIZES``): d_model 256, 4 layers, byte vocabulary (257), each family's state and
MLP chosen so that every model has 1.8-2.4M parameters (the Mamba LM has 1.82M), trained on
random tokens at T = 256 x batch 16 (``--quick``: T = 64 x 4) with AdamW, zero initial states.

The matmul floor: model FLOPs of one forward + backward step (counted by
``torch.utils.flop_counter.FlopCounterMode``: matrix multiplies and convolutions only, so the
scans' element-wise work is not in the numerator; grouped convolutions' backward by
``conv_backward_flops``, since session 9) divided by the fp32 matmul rate measured in the
same process with the same thread count (2048 x 2048, best of 5). The ratio is the fraction of
the machine's matmul rate the step achieves; 1.0 would be a step made only of large matmuls.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

D_MODEL, N_LAYERS, VOCAB = 256, 4, 257

# ModelConfig fields per family (d_model, n_layers, vocab added).
FAMILY_SIZES = {
    "mamba": dict(d_state=16, d_conv=4),
    "mamba2": dict(d_state=64, d_conv=4, mixer_options={"headdim": 64}),
    "longhorn": dict(d_state=16, d_conv=4),
    "s4d": dict(d_state=64, mlp_ratio=2),
    "s5": dict(d_state=128, mlp_ratio=2),
    "lru": dict(d_state=128, mlp_ratio=1),
    "gru": dict(d_state=16),
    "lstm": dict(d_state=16),
}


def build(mixer: str):
    """The family's SSMLanguageModel at its benchmark size."""
    from longssm.models import ModelConfig, SSMLanguageModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        mixer=mixer, d_model=D_MODEL, n_layers=N_LAYERS, vocab_size=VOCAB, **FAMILY_SIZES[mixer]
    )
    return SSMLanguageModel(cfg).train()


def make_step(model, batch: int, T: int):
    """A closure running forward + backward + AdamW on fixed random tokens (batch, T + 1)."""
    from longssm.ops.cross_entropy import cross_entropy
    from longssm.train.optim import adamw

    # the AdamW and the loss of `longssm train` (fused where they can be)
    opt = adamw(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, VOCAB, (batch, T + 1), generator=torch.Generator().manual_seed(0))

    def step():
        logits, _ = model(tokens[:, :-1])  # (B, T, V)
        loss = cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each wanted gradient (input, weight) costs what the
    forward does, 2 x (outputs of the forward) x (w_shape[1] = inputs per group) x (kernel size).

    torch's own formula (2.13) ignores ``groups`` here: for the depthwise convolution of Mamba's
    layers (256 channels, 4 taps) it counted 1.08 GFLOP where the work is 8.4 MFLOP, which made a
    peer's step (mambapy, transformers' Mamba: torch's conv1d) look 4.3 GFLOP larger."""
    # args: bias, stride, padding, dilation, transposed, output_padding, groups, output_mask
    transposed, output_mask = args[4], args[7]
    outputs = x_shape if transposed else grad_out_shape  # the forward's output is grad_out
    per_pass = 2 * math.prod(outputs) * math.prod(w_shape[1:])
    return per_pass * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def rnn_layer_flops(x_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten.mkldnn_rnn_layer`` (torch's LSTM on the CPU, one layer): the input and
    recurrent matmuls of every step, 2 x (steps x batch) x (gates·H x I + gates·H x H); the gates'
    element-wise work is not counted, as for the other families. torch 2.13's counter has no
    formula for it: the LSTM's step looked like its output projections alone."""
    return 2 * x_shape[0] * x_shape[1] * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def rnn_layer_backward_flops(x_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten.mkldnn_rnn_layer_backward``: twice the forward's matmuls (∂ input and
    state, ∂ weights)."""
    return 2 * rnn_layer_flops(x_shape, w_ih_shape, w_hh_shape)


def flop_formulas() -> dict:
    """Our formulas for the ops torch's counter gets wrong or does not know (``custom_mapping``)."""
    aten = torch.ops.aten
    return {
        aten.convolution_backward: conv_backward_flops,
        aten.mkldnn_rnn_layer: rnn_layer_flops,
        aten.mkldnn_rnn_layer_backward: rnn_layer_backward_flops,
    }


def count_step_flops(logits_of, tokens: torch.Tensor) -> int:
    """Matmul + convolution FLOPs of one forward + backward on ``tokens`` (B, T + 1), counted by
    torch's flop counter (with ``conv_backward_flops`` for the convolution's backward and
    ``rnn_layer_flops`` for torch's LSTM layer);
    ``logits_of`` maps inputs (B, T) to logits (B, T, V).

    Work done inside a fused kernel is invisible to the counter, but the counter's global module
    hooks make the layers step aside: the projections run as their ``nn.Linear`` modules
    (``layers.project_in`` and the fused step sizes), and since session 10 the causal convolution
    as its ``nn.Conv1d`` (``layers.conv``; before, its 0.05 of the benchmark LM's 5.89 GFLOP was
    missing, which understated our ratio by ~1%)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        logits = logits_of(tokens[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).backward()
    return int(counter.get_total_flops())


def step_flops(model, batch: int, T: int) -> int:
    """``count_step_flops`` of a family model on random tokens (its gradients cleared after)."""
    tokens = torch.randint(0, VOCAB, (batch, T + 1), generator=torch.Generator().manual_seed(1))
    flops = count_step_flops(lambda inputs: model(inputs)[0], tokens)
    model.zero_grad(set_to_none=True)
    return flops


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul GFLOP/s, best of ``repeats`` (n x n times n x n)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def sorted_step_times(step, warmup: int = 2, repeats: int = 7) -> list[float]:
    """Seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed ones, sorted."""
    for _ in range(warmup):
        step()
    return sorted(_seconds(step) for _ in range(repeats))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(mixer: str, batch: int, T: int, repeats: int = 3) -> dict:
    """tokens/s (best of ``repeats`` steps after one warm-up), FLOPs and the matmul-floor ratio;
    freed memory kept in the process, as ``longssm train`` runs (``longssm.runtime``)."""
    from longssm.runtime import huge_pages_advised, keep_freed_memory

    kept = keep_freed_memory()
    model = build(mixer)
    flops = step_flops(model, batch, T)
    step = make_step(model, batch, T)
    step()
    times = [_seconds(step) for _ in range(repeats)]
    rate = matmul_rate()
    best = min(times)
    return {
        "mixer": mixer,
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_s": best,
        "all_s": times,
        "tokens_per_s": batch * T / best,
        "step_gflop": flops / 1e9,
        "matmul_gflop_s": rate,
        "floor_ratio": flops / best / 1e9 / rate,
        "timed_with_kept_memory": kept,
        "timed_with_huge_pages": huge_pages_advised(),
    }


def profile(mixer: str, batch: int, T: int, top: int = 15) -> list[dict]:
    """The ``top`` operators of one step by self CPU time (after a warm-up step)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(mixer)
    step = make_step(model, batch, T)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:top]
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="profile one training step of a family")
    parser.add_argument("--mixer", default="mamba", choices=sorted(FAMILY_SIZES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from longssm.runtime import keep_freed_memory

    keep_freed_memory()  # as `longssm train` does
    torch.set_num_threads(args.threads)
    batch, T = (4, 64) if args.quick else (16, 256)
    rows = profile(args.mixer, batch, T)
    total = sum(r["self_ms"] for r in rows)
    print(f"{args.mixer}: one step at T={T} x {batch}, torch threads {args.threads}")
    for r in rows:
        print(f"  {r['self_ms']:9.1f} ms {100 * r['share']:5.1f}%  x{r['calls']:<5} {r['op']}")
    print(f"  (top {len(rows)}: {total:.1f} ms)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"mixer": args.mixer, "batch": batch, "T": T, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
