"""Profile one training step of case 3's benchmark LM: step time (best / median of 7) and the top
operators by self CPU time.

    PYTHONPATH=src python benchmarks/profile_lm.py [--threads 1] [--T 32 --batch 64] [--top 25]

The LM: byte-level Mamba, d_model 128, 4 layers, d_state 16, expand 2, d_conv 4, AdamW; torch on
``--threads`` threads, numba on its default (the core count). Three warm-up steps first.
"""

from __future__ import annotations

import argparse

import torch
from family_step import make_step, sorted_step_times
from run import CASE3_MODEL, build_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="profile one training step of the benchmark LM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    from longssm.runtime import keep_freed_memory

    keep_freed_memory()  # as `longssm train` does
    torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    step = make_step(build_model("ours_auto", CASE3_MODEL).train(), args.batch, args.T)

    times = sorted_step_times(step, warmup=3)
    tokens_per_s = args.batch * args.T / times[0]
    print(
        f"step ms best {times[0] * 1e3:.1f} median {times[3] * 1e3:.1f} "
        f"tokens/s {tokens_per_s:.0f} (torch threads {args.threads})"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
