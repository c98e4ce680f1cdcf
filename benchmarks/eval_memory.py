"""Constant-memory evaluation: peak RSS and throughput of chunked streaming at 2^16 and 2^20 tokens.

Each length runs in a fresh subprocess that builds a byte-level Mamba LM (seeded, untrained),
draws random tokens and scores one sequence of L tokens with ``evaluate_lengths`` (reset protocol,
one row, chunks of ``--chunk-size`` with the state carried). The child reports its wall time and
peak resident memory (``VmHWM`` from ``/proc/self/status``); the parent prints a table and writes
JSON with the machine description. Chunked streaming should make peak RSS independent of L.

    PYTHONPATH=src python benchmarks/eval_memory.py --out benchmarks/results/eval_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def read_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmHWM: peak RSS, VmRSS: current RSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from longssm.eval.lengths import evaluate_lengths
    from longssm.models import ModelConfig, SSMLanguageModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Only the Mamba-1 mixer has the scan option (auto: the fused numba kernel on CPU).
    options = {"scan": args.scan} if args.mixer == "mamba" else {}
    cfg = ModelConfig(mixer=args.mixer, d_model=args.d_model, n_layers=args.n_layers,
                      d_state=args.d_state, expand=args.expand, d_conv=args.d_conv, vocab_size=257,
                      mixer_options=options)
    model = SSMLanguageModel(cfg).to(args.device).eval()
    length = args.child
    tokens = np.random.default_rng(0).integers(0, 257, size=length + 1, dtype=np.uint16)  # (L+1,)
    # a short warm-up so one-off allocations and kernel selection are not timed
    evaluate_lengths(model, tokens[: 2 * args.chunk_size + 1], [args.chunk_size], n_tokens=1,
                     batch_size=1, chunk_size=args.chunk_size, progress=False, start=0)
    rss_before = read_status_kib("VmRSS")
    t0 = time.perf_counter()
    (record,) = evaluate_lengths(model, tokens, [length], "reset", n_tokens=length, batch_size=1,
                                 chunk_size=args.chunk_size, progress=False, start=0)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "length": length,
        "seconds": seconds,
        "tokens_per_s": length / seconds,
        "peak_rss_mib": read_status_kib("VmHWM") / 1024,
        "rss_before_eval_mib": rss_before / 1024,
        "loss": record["loss"],
        "n_tokens": record["n_tokens"],
        "parameters": model.num_parameters(),
        "torch_threads": torch.get_num_threads(),
    }))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2-lengths", default="16,20", help="exponents of the lengths run")
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--mixer", default="mamba")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--d-conv", type=int, default=4)
    parser.add_argument("--scan", default="auto", help="mamba scan: auto | fused | chunk | naive")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args)
        return 0

    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    for exponent in (int(e) for e in args.log2_lengths.split(",")):
        cmd = [sys.executable, __file__, *passthrough, "--child", str(2**exponent)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"L=2^{exponent:<3} {r['tokens_per_s']:>9.0f} tok/s  peak RSS {r['peak_rss_mib']:>7.1f} MiB"
              f"  (before eval {r['rss_before_eval_mib']:.1f} MiB)  {r['seconds']:.1f} s", flush=True)
    if len(rows) >= 2:
        growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
        print(f"peak RSS growth from L={rows[0]['length']} to L={rows[-1]['length']}: {growth:+.1%}")
    if args.out:
        from longssm.eval.results import machine_info

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        model = {k: getattr(args, k) for k in ("mixer", "d_model", "n_layers", "d_state", "expand",
                                               "d_conv", "scan")}
        out.write_text(json.dumps({"benchmark": "eval_memory", "model": model,
                                   "chunk_size": args.chunk_size, "device": args.device,
                                   "machine": machine_info(), "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
