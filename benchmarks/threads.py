"""Thread table: the benchmark LM's training step at every (torch threads, numba threads) pair.

    PYTHONPATH=src python benchmarks/threads.py --out benchmarks/results/threads.json

The LM is case 3's (byte-level Mamba, d_model 128, 4 layers, d_state 16, expand 2, d_conv 4),
trained with AdamW at T=32 x batch 64 and T=1024 x batch 2; each (setting, torch threads, numba
threads) runs in a fresh process (thread pools never carry over), times one step best of 7 after
two warm-up steps and records the load average before and after. numba's threads drive the fused
scan kernels; the fused causal convolution keeps its own fixed count (``ops/causal_conv``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = [(32, 64), (1024, 2)]
PAIRS = [(1, 1), (1, 2), (2, 1), (2, 2)]


def child(T: int, batch: int, torch_threads: int, numba_threads: int) -> dict:
    """One process's measurement: best and median step seconds over 7 timed steps."""
    import numba
    import torch
    from family_step import make_step, sorted_step_times
    from run import CASE3_MODEL, build_model

    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)
    torch.manual_seed(0)
    step = make_step(build_model("ours_auto", CASE3_MODEL).train(), batch, T)

    times = sorted_step_times(step)
    return {
        "best_s": times[0],
        "median_s": times[3],
        "tokens_per_s": batch * T / times[0],
        "torch_threads_after": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    rows = []
    print("torch threads | numba threads | setting | best ms | median ms | tokens/s | load avg")
    for T, batch in SETTINGS:
        for torch_threads, numba_threads in PAIRS:
            load = os.getloadavg()
            spec = json.dumps([T, batch, torch_threads, numba_threads])
            done = subprocess.run(
                [sys.executable, __file__, "--child", spec], capture_output=True, text=True
            )
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            row = json.loads(done.stdout.splitlines()[-1])
            row.update(T=T, batch=batch, torch_threads=torch_threads)
            row.update(numba_threads=numba_threads, load_before=load, load_after=os.getloadavg())
            rows.append(row)
            print(
                f"{torch_threads} | {numba_threads} | T={T} x {batch} | {row['best_s'] * 1e3:.0f} | "
                f"{row['median_s'] * 1e3:.0f} | {row['tokens_per_s'] / 1e3:.1f}k | "
                f"{load[0]:.2f} -> {row['load_after'][0]:.2f}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
