"""Every mixer family at ~1M parameters: validation loss after a short budget, zero vs previous.

For each registered mixer family (byte-level, vocabulary 257; sizes in ``SIZES``, chosen to land
near 1M parameters) and each state-initialisation policy (``zero``: every segment starts from zeros;
``previous``: the LongSSM carry, each segment starts from the previous segment's detached final
state), train ``--steps`` steps of B x T = 16 x 32 byte tokens on ``python-stdlib`` and report the
validation loss at T = 32 under both evaluation protocols (``reset``: zero state per segment,
``stream``: state carried across consecutive segments) and the training throughput (median
tokens/s over the logging intervals, validation excluded). Results are written as JSON.

    PYTHONPATH=src python benchmarks/families.py --out benchmarks/results/families.json

The budget is tiny (150 steps = 77k tokens by default): the numbers rank families at the very
start of training, not at convergence.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from longssm.config import RunConfig
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.mixers import MIXER_NAMES
from longssm.train.loop import train

# Per registered family: ModelConfig fields (vocab_size 257 added) chosen to land near 1M
# parameters; a registered family without an entry runs at SIZE_DEFAULT (check its count).
SIZES = {
    "s4d": dict(d_model=128, n_layers=6, d_state=64, mlp_ratio=2),
    "s5": dict(d_model=128, n_layers=8, d_state=64, mlp_ratio=2),
    "mamba": dict(d_model=128, n_layers=8, d_state=16, d_conv=4),
    "mamba2": dict(d_model=160, n_layers=6, d_state=16, d_conv=4, mixer_options={"headdim": 32}),
    "longhorn": dict(d_model=128, n_layers=8, d_state=16, d_conv=4),
    "lru": dict(d_model=128, n_layers=6, d_state=64, mlp_ratio=2),
    "gru": dict(d_model=256, n_layers=2),
    "lstm": dict(d_model=160, n_layers=4),
    "bst": dict(d_model=128, n_layers=4, d_state=16, mlp_ratio=2),
    "block-attention": dict(d_model=128, n_layers=6, mlp_ratio=2),
}
SIZE_DEFAULT = dict(d_model=128, n_layers=6)
FAMILIES = {name: dict(mixer=name, **SIZES.get(name, SIZE_DEFAULT)) for name in MIXER_NAMES}
POLICIES = ("zero", "previous")


def parameter_count(fields: dict) -> int:
    return SSMLanguageModel(ModelConfig(vocab_size=257, **fields)).num_parameters()


def run_one(fields: dict, policy: str, args: argparse.Namespace, workdir: Path) -> dict:
    cfg = RunConfig.from_dict(
        {
            "model": dict(fields),
            "data": {
                "corpus": args.corpus,
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "max_tokens": args.max_tokens,
            },
            "train": {
                "policy": policy,
                "steps": args.steps,
                "lr": args.lr,
                "warmup_steps": max(1, args.steps // 10),
                "log_every": 10,
                "eval_every": 0,
                "eval_batches": args.eval_batches,
                "diag_every": 0,
                "checkpoint_every": 0,
                "keep_last": 1,
                "progress": False,
                "seed": args.seed,
            },
        }
    )
    started = time.perf_counter()
    result = train(cfg, workdir / f"{fields['mixer']}-{policy}", log=lambda *a: None)
    rates = [r["tokens_per_s"] for r in result.history if r["val_loss_reset"] == ""]
    return {
        "policy": policy,
        "train_loss": result.train_loss,
        "val_loss_reset": result.val_loss_reset,
        "val_loss_stream": result.val_loss_stream,
        "tokens_per_s": statistics.median(rates) if rates else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/families.json")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--corpus", default="python-stdlib")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-batches", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            fields = FAMILIES[name]
            n_params = parameter_count(fields)
            for policy in POLICIES:
                row = {"family": name, "params": n_params, "config": fields}
                row.update(run_one(fields, policy, args, Path(tmp)))
                rows.append(row)
                print(
                    f"{name:9s} {n_params:>9,d} {policy:9s} val reset {row['val_loss_reset']:.4f} "
                    f"stream {row['val_loss_stream']:.4f} train {row['train_loss']:.4f} "
                    f"{row['tokens_per_s']:>8,.0f} tok/s ({row['wall_s']} s)",
                    flush=True,
                )
    out = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "tokens_per_run": args.steps * args.batch_size * args.seq_len,
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
