"""Regenerate docs/results/prune-heads.md: Mamba-2 head pruning at CPU scale.

    PYTHONPATH=src python docs/results/prune_heads.py        # under a minute from scratch on 2 cores

1. Pretrain a small byte-level Mamba-2 (8 heads of 16 channels per layer) on the Python standard
   library (the setup of adapt-prune.md, mixer mamba2).
2. Prune heads (``longssm.adapt.prune_model(..., "heads", R)``, Taylor-1 head scores over 32
   calibration windows of the train split) at R = 0, 0.25, 0.5, 0.75; loss on the stdlib test
   split at L = T and L = 16 T with 95% paired block-bootstrap intervals (differences paired
   with the unpruned model), and forward tokens/s (median and range of 5 timed passes).
Writes prune-heads.md and prune-heads.json beside this script; the run goes to
results/prune-heads/ (rerunning reuses it, and says so on stderr: delete the folder to
train afresh after a change to the code).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_prune import T, lengths_records, paired, pretrain  # noqa: E402

from longssm.adapt import prune_model  # noqa: E402
from longssm.adapt.prune import calibration_rows, count_parameters  # noqa: E402
from longssm.adapt.tune import target_corpus  # noqa: E402
from longssm.checkpoint import load_model  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "results" / "prune-heads"
BASE = ["--model.mixer=mamba2", "--model.d_model=64", "--model.n_layers=2", "--model.d_state=16",
        "--model.d_conv=4", "--model.mixer_options.headdim=16",
        "--model.mixer_options.chunk_size=64", "--data.corpus=python-stdlib",
        f"--data.seq_len={T}", "--data.batch_size=16", "--train.steps=400",
        "--train.policy=zero", "--train.lr=3e-3", "--train.threads=1", "--train.eval_batches=2"]
RATIOS = [0.0, 0.25, 0.5, 0.75]




@torch.inference_mode()
def throughput(model, tokens, repeats: int = 5) -> dict:
    """Forward tokens/s on 8 rows of 16 T tokens: median, min, max of ``repeats`` passes."""
    x = torch.as_tensor(np.asarray(tokens[: 8 * 16 * T], dtype=np.int64)).view(8, 16 * T)
    model(x[:, :T])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        rates.append(x.numel() / (time.perf_counter() - start))
    return {"median": float(np.median(rates)), "min": float(min(rates)), "max": float(max(rates))}


def study() -> dict:
    model, _, meta = load_model(pretrain(OUT, BASE))
    corpus = meta["config"]["data"]["corpus"]
    test = target_corpus(meta, corpus, "test", model.cfg.vocab_size).tokens
    calib = calibration_rows(target_corpus(meta, corpus, "train", model.cfg.vocab_size).tokens,
                             32, T)
    rows = []
    for ratio in RATIOS:
        pruned, info = prune_model(copy.deepcopy(model), "heads", ratio, calib)
        rows.append({"ratio": ratio, "heads": info["heads"][1], "d_inner": info["d_inner"][1],
                     "parameters": count_parameters(pruned)["parameters"],
                     "kept_heads": info["kept_heads"],
                     "records": lengths_records(pruned, test, [T, 16 * T]),
                     "tokens_per_second": throughput(pruned, test)})
    for row in rows:
        (short, long), (dense_short, dense_long) = row["records"], rows[0]["records"]
        row["delta_short"] = paired(short, dense_short)
        row["delta_long"] = paired(long, dense_long)
        row["long_minus_short"] = paired(long, dense_long, short, dense_short)
    return {"rows": rows, "base_parameters": count_parameters(model)["parameters"]}


def fmt(r: dict) -> str:
    return f"{r['loss']:.3f} [{r['loss_low']:.3f}, {r['loss_high']:.3f}]"


def fmt_d(d: dict) -> str:
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def write_page(data: dict, minutes: float) -> None:
    lines = [
        "# Pruning Mamba-2 heads (CPU scale)", "",
        f"Made by `PYTHONPATH=src python docs/results/prune_heads.py` ({minutes:.1f} min on this "
        "machine). Base: byte-level Mamba-2, d_model 64, 2 layers, 8 heads of 16 channels, "
        f"d_state 16, {data['base_parameters']:,} parameters, 400 steps of 16 x {T} tokens on the "
        "Python standard library. Heads scored by Taylor-1 (mean |W ⊙ ∂L/∂W| over the head's z, x, "
        "dt rows of in_proj and its out_proj columns, 32 calibration windows of the train split); "
        "the same number dropped in every layer. Loss in nats per byte on the test split, reset "
        "protocol, [95% paired block-bootstrap interval]; Δ = pruned - unpruned. tokens/s: "
        "forward passes of 8 x 1024 tokens, median [min, max] of 5.", "",
        f"| ratio | heads | parameters | L={T} | Δ L={T} | L={16 * T} | Δ L={16 * T} | "
        "Δ long - Δ short | tokens/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        tps = row["tokens_per_second"]
        short, long = row["records"]
        lines.append(
            f"| {row['ratio']:.2f} | {row['heads']} | {row['parameters']:,} | {fmt(short)} | "
            f"{fmt_d(row['delta_short'])} | {fmt(long)} | {fmt_d(row['delta_long'])} | "
            f"{fmt_d(row['long_minus_short'])} | {tps['median']:,.0f} [{tps['min']:,.0f}, "
            f"{tps['max']:,.0f}] |")
    worse = [r for r in data["rows"][1:] if r["long_minus_short"]["low"] > 0]
    lines += ["", f"Long vs short: at {len(worse)} of {len(data['rows']) - 1} ratios the loss "
              f"increase at L={16 * T} exceeds the one at L={T} (interval of Δ long - Δ short "
              "above 0); the gap is small beside the increase itself."]
    lines += ["", "Paper (Ghattas, Hassid & Schwartz 2025, Mamba-2 LLMs of 130M-2.7B on zero-shot "
              "tasks): pruning heads collapses accuracy even at small ratios, unlike WANDA or "
              "d_state pruning. What carries over here is only the direction and the "
              "bookkeeping (exactness, smaller and faster model); a 2-layer byte model on one "
              "corpus is not an LLM, and its numbers say nothing about the paper's scale.", ""]
    (HERE / "prune-heads.md").write_text("\n".join(lines))


def main() -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    data = study()
    minutes = (time.perf_counter() - started) / 60
    (HERE / "prune-heads.json").write_text(json.dumps(data, indent=1) + "\n")
    write_page(data, minutes)
    print(f"wrote {HERE / 'prune-heads.md'} ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
