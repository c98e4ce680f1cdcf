"""GPU benchmarks: longssm's Triton / fla paths beside its torch forms and the peers, on one GPU.

    PYTHONPATH=src python benchmarks/gpu.py [--quick] [--cases 1,2,3,4] \\
        --out benchmarks/results/gpu.json

Cases (the GPU versions of ``run.py``'s; every row of a case in the same process and run):
    1  selective scan forward + backward, float32, at (4, 2048, 512, 16) and (8, 512, 256, 16):
       ours (triton with several channel blocks, chunk) beside mambapy (pscan, sequential) and
       transformers' torch slow path; best time of the repeats and peak CUDA memory above inputs
    2  SSD forward + backward at (8, 512, 8 heads, headdim 64, d_state 64): ssd_fla vs ssd_chunk
       (and forward only, under inference_mode)
    3  training throughput (tokens/s, forward + backward + AdamW) of the byte-level Mamba LM of
       run.py (d_model 128, 4 layers) at T=32 x 64 and T=1024 x 2: ours (triton, chunk) vs
       transformers' MambaForCausalLM (torch path, and use_mambapy) and mambapy's LM
    4  evaluation of one sequence of 2^16 and 2^20 tokens (streamed in chunks, state carried):
       tokens/s and peak CUDA memory

Rows whose peer is not installed are reported as errors, not dropped. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as cpu_bench  # noqa: E402  (the CPU benchmark's input builders and model factory)

DEVICE = "cuda"


def cuda_timed(fn, repeats: int) -> dict:
    """Warm up twice, then the best of ``repeats`` synchronised wall times and the peak memory
    allocated above what was allocated before the timed runs (inputs excluded)."""
    fn()
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "seconds": min(times),
        "all_seconds": times,
        "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20,
    }


def scan_fn(impl: str):
    if impl.startswith("triton_bd"):
        from longssm.ops.selective_scan import selective_scan_triton

        block_d = int(impl[len("triton_bd") :])
        return lambda *a: selective_scan_triton(*a, block_d=block_d)[0]
    return cpu_bench.scan_function(impl)


def row_scan(impl: str, shape, repeats: int) -> dict:
    fn = scan_fn(impl)
    inputs = [t.detach().to(DEVICE).requires_grad_() for t in cpu_bench.scan_inputs(*shape)]
    w = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def step():
        for t in inputs:
            t.grad = None
        (fn(*inputs) * w).sum().backward()

    return cuda_timed(step, repeats)


def row_ssd(impl: str, shape, repeats: int) -> dict:
    from longssm.ops.ssd import ssd_chunk, ssd_fla, ssd_naive

    batch, T, heads, headdim, d_state = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, T, heads, headdim, generator=g)  # (B, T, H, P)
    dt = torch.exp(torch.randn(batch, T, heads, generator=g) - 3.0)  # (B, T, H)
    A = -torch.rand(heads, generator=g) - 0.5  # (H,)
    B = torch.randn(batch, T, 1, d_state, generator=g)  # (B, T, G, N)
    C = torch.randn(batch, T, 1, d_state, generator=g)  # (B, T, G, N)
    forward_only = impl.endswith("_forward")
    inputs = [t.to(DEVICE).requires_grad_(not forward_only) for t in (x, dt, A, B, C)]
    name = impl.removesuffix("_forward")
    fn = {"ssd_chunk": ssd_chunk, "ssd_fla": ssd_fla, "ssd_naive": ssd_naive}[name]

    def step():
        if forward_only:
            with torch.inference_mode():
                fn(*inputs)
            return
        for t in inputs:
            t.grad = None
        fn(*inputs)[0].sum().backward()

    return cuda_timed(step, repeats)


def row_train(impl: str, model_cfg: dict, batch: int, T: int, steps: int, repeats: int) -> dict:
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = cpu_bench.build_model(impl, model_cfg).to(DEVICE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 257, (batch, T + 1), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(DEVICE)

    def logits_of(inp):
        out = model(inp)
        if isinstance(out, tuple):
            return out[0]
        return out.logits if hasattr(out, "logits") else out

    def step():
        for _ in range(steps):
            logits = logits_of(tokens[:, :-1])  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    result = cuda_timed(step, repeats)
    result["tokens_per_s"] = steps * batch * T / result["seconds"]
    return result


def row_eval(scan: str, n_tokens: int, chunk_size: int) -> dict:
    from longssm.eval.lengths import evaluate_lengths
    from longssm.models import ModelConfig, SSMLanguageModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        mixer="mamba", vocab_size=257, d_model=128, n_layers=4, d_state=16, expand=2, d_conv=4,
        mixer_options={"scan": scan},
    )  # fmt: skip
    model = SSMLanguageModel(cfg).to(DEVICE).eval()
    tokens = np.random.default_rng(0).integers(0, 257, size=n_tokens + 1, dtype=np.uint16)
    # A short warm-up so one-off allocations and kernel compilation are not timed.
    evaluate_lengths(model, tokens[: 2 * chunk_size + 1], [chunk_size], n_tokens=1, batch_size=1,
                     chunk_size=chunk_size, progress=False, start=0)  # fmt: skip
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    (record,) = evaluate_lengths(model, tokens, [n_tokens], "reset", n_tokens=n_tokens,
                                 batch_size=1, chunk_size=chunk_size, progress=False, start=0)  # fmt: skip
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20,
        "loss": record["loss"],
    }


def measure(rows: list, case: int, impl: str, fn, **fields) -> None:
    try:
        result = fn()
    except Exception as exc:  # a missing peer or an out-of-memory row is reported, not fatal
        traceback.print_exc(limit=2)
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    torch.cuda.empty_cache()
    row = {"case": case, "impl": impl, **fields, **result}
    rows.append(row)
    shown = {k: v for k, v in row.items() if k != "all_seconds"}
    print(json.dumps(shown), flush=True)


def machine_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    for name in ("triton", "fla", "mambapy", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001  (absent or versionless peers are just not listed)
            info[name] = None
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="1,2,3,4", help="comma-separated case numbers")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and slow rows skipped")
    parser.add_argument("--out", type=Path, help="write the rows and machine info as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    cases = {int(c) for c in args.cases.split(",")}
    repeats = 3 if args.quick else 5
    rows: list[dict] = []
    if 1 in cases:
        impls = ["triton_bd4", "triton_bd8", "triton_bd16", "triton_bd32", "chunk", "mambapy_pscan"]
        impls += [] if args.quick else ["mambapy_seq", "hf_slow"]
        for shape in ((4, 2048, 512, 16), (8, 512, 256, 16)):
            for impl in impls:
                measure(rows, 1, impl, partial(row_scan, impl, shape, repeats), shape=list(shape))
    if 2 in cases:
        shape = (8, 512, 8, 64, 64)
        impls = ("ssd_fla", "ssd_chunk", "ssd_fla_forward", "ssd_chunk_forward")
        for impl in impls + (() if args.quick else ("ssd_naive",)):
            measure(rows, 2, impl, partial(row_ssd, impl, shape, repeats), shape=list(shape))
    if 3 in cases:
        model_cfg = {"d_model": 128, "n_layers": 4, "d_state": 16, "expand": 2, "d_conv": 4}
        for batch, T in ((64, 32), (2, 1024)):
            for impl in ("ours_triton", "ours_chunk", "hf", "hf_mambapy", "mambapy"):
                steps = 5 if T == 32 else 2
                measure(rows, 3, impl, partial(row_train, impl, model_cfg, batch, T, steps, repeats),
                        batch=batch, T=T)  # fmt: skip
    if 4 in cases:
        for n_tokens in (2**16, 2**20):
            for scan in ("triton", "chunk"):
                measure(rows, 4, f"ours_{scan}", partial(row_eval, scan, n_tokens, 4096),
                        n_tokens=n_tokens)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"benchmark": "gpu", "machine": machine_info(), "repeats": repeats, "rows": rows}
        args.out.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
