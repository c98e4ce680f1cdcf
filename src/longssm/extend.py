"""``longssm extend``: the LongSSM experiment in one command.

Trains the same model twice at training length T — hidden state initialised to zeros at every
segment, and initialised from the previous segment's final state (LongSSM) — evaluates both from
L = 16 up to L_max under the reset, stream and shuffled protocols, classifies each curve by
Definition 2.1, and writes a results folder:

    OUT/runs/<policy>/             the training runs (checkpoints, metrics.csv, config.json)
    OUT/results/<policy>.json|csv  loss, perplexity and bits per byte per (protocol, L)
    OUT/extension.png|svg          loss versus L, runs as colours, protocols as line styles
    OUT/summary.json, OUT/report.md  the table and the extension type of every run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from longssm.config import ConfigError, RunConfig, apply_overrides

# Presets: "quick" finishes in 1-2 minutes on 2 idle CPU cores (71 s measured); "full" is the paper-sized default
# of this tool (hours on a CPU).
PRESETS = {
    "quick": {
        "model": {
            "mixer": "mamba",
            "d_model": 64,
            "n_layers": 2,
            "d_state": 16,
            "expand": 2,
            "d_conv": 0,
        },
        "data": {"seq_len": 32, "tokens_per_step": 2048},
        "train": {
            "steps": 300,
            "lr": 4e-3,
            "warmup_steps": 30,
            "eval_every": 100,
            "eval_batches": 4,
            "checkpoint_every": 100,
            "log_every": 20,
        },
        "max_length": 8192,
        "n_tokens": 8192,
    },
    "full": {
        "model": {
            "mixer": "mamba",
            "d_model": 128,
            "n_layers": 4,
            "d_state": 16,
            "expand": 2,
            "d_conv": 0,
        },
        "data": {"seq_len": 32, "tokens_per_step": 4096},
        "train": {
            "steps": 3000,
            "lr": 3e-3,
            "warmup_steps": 100,
            "eval_every": 500,
            "checkpoint_every": 500,
        },
        "max_length": 32768,
        "n_tokens": 65536,
    },
}


@dataclass
class RunOutcome:
    policy: str
    run_dir: Path
    results: dict
    train_seconds: float
    eval_seconds: float


def add_extend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a zero-initialised and a previous-initialised model at length T and compare their "
        "perplexity up to L_max. Extra --model.*/--data.*/--train.* overrides apply to both runs."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small preset: 1-2 min on 2 idle CPU cores, 30 s on a GPU"
    )
    parser.add_argument(
        "--corpus", default="python-stdlib", help="corpus spec (default: python-stdlib)"
    )
    parser.add_argument("--mixer", default=None, help="s4d, s5, mamba or mamba2 (default: mamba)")
    parser.add_argument("--seq-len", type=int, default=None, help="training length T")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run")
    parser.add_argument("--policies", default="zero,previous", help="comma-separated policies")
    parser.add_argument("--max-length", type=int, default=None, help="longest evaluation length")
    parser.add_argument(
        "--n-tokens", type=int, default=None, help="target tokens scored per length"
    )
    parser.add_argument("--protocol", default="all", help="reset, stream, shuffled or all")
    parser.add_argument(
        "--out", default=None, help="results folder (default: results/extend-<time>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted --out folder"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def power_lengths(max_length: int, smallest: int = 16) -> list[int]:
    """16, 32, ..., max_length (max_length itself included even if not a power of two)."""
    if max_length < smallest:
        raise ConfigError(f"--max-length must be >= {smallest}, got {max_length}")
    out, L = [], smallest
    while L <= max_length:
        out.append(L)
        L *= 2
    if out[-1] != max_length:
        out.append(max_length)
    return out


def build_config(args, policy: str, extra_overrides: list[str]) -> tuple[RunConfig, dict]:
    preset = PRESETS["quick" if args.quick else "full"]
    data = {
        "model": dict(preset["model"]),
        "data": dict(preset["data"]),
        "train": dict(preset["train"]),
    }
    data["data"]["corpus"] = args.corpus
    data["train"]["policy"] = policy
    data["train"]["seed"] = args.seed
    data["train"]["progress"] = not args.quiet
    if args.mixer:
        data["model"]["mixer"] = args.mixer
    if args.seq_len:
        data["data"]["seq_len"] = args.seq_len
        data["data"]["tokens_per_step"] = max(data["data"]["tokens_per_step"], args.seq_len)
    if args.steps:
        data["train"]["steps"] = args.steps
    data = apply_overrides(data, extra_overrides)
    return RunConfig.from_dict(data), preset


def run_extend(args: argparse.Namespace, extra_overrides: list[str] | None = None) -> int:
    """Train, evaluate, classify, plot and report. Returns the exit code."""
    from longssm.checkpoint import checkpoint_dirs, load_model, read_meta
    from longssm.dist import resolve_device
    from longssm.eval import classify_extension, evaluate_lengths, make_results, save_results
    from longssm.eval.cli import format_table, load_split
    from longssm.eval.lengths import resolve_protocols
    from longssm.train.loop import train

    overrides = list(extra_overrides or [])
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if len(policies) < 1 or len(set(policies)) != len(policies):
        raise ConfigError(f"--policies must list distinct policies, got {args.policies!r}")
    protocols = resolve_protocols(args.protocol)
    configs = {p: build_config(args, p, overrides) for p in policies}
    preset = next(iter(configs.values()))[1]
    max_length = args.max_length or preset["max_length"]
    n_tokens = args.n_tokens or preset["n_tokens"]
    if n_tokens < 1:
        raise ConfigError(f"--n-tokens must be >= 1, got {n_tokens}")
    lengths = power_lengths(max_length)
    out = Path(args.out or f"results/extend-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise ConfigError(f"{out} already exists and is not empty; pass --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)

    outcomes = []
    started = time.perf_counter()
    for policy, (cfg, _) in configs.items():
        run_dir = out / "runs" / policy.replace(":", "")
        t0 = time.perf_counter()
        done = checkpoint_dirs(run_dir)
        if done and read_meta(done[-1])["step"] >= cfg.train.steps:
            print(f"[{policy}] already trained: {done[-1]}")
        else:
            print(
                f"[{policy}] training {cfg.model.mixer} at T={cfg.data.seq_len} for {cfg.train.steps} steps"
            )
            train(cfg, run_dir, resume=bool(done))
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        # Evaluate where the run trained (train.device: cpu, cuda or auto).
        model, ckpt, meta = load_model(run_dir, device=resolve_device(cfg.train.device))
        tokens, bytes_per_token = load_split(meta, "test")
        print(
            f"[{policy}] evaluating at L = {lengths[0]} ... {lengths[-1]} ({', '.join(protocols)})"
        )
        records = evaluate_lengths(
            model,
            tokens,
            lengths,
            protocols,
            n_tokens=n_tokens,
            batch_size=8,
            bytes_per_token=bytes_per_token or 1.0,
            progress=not args.quiet,
            seed=args.seed,
        )
        classification = {}
        for protocol in protocols:
            rows = [
                r for r in records if r["protocol"] == protocol and r["length"] >= cfg.data.seq_len
            ]
            verdict = classify_extension([r["length"] for r in rows], [r["loss"] for r in rows])
            classification[protocol] = {**verdict.to_dict(), "from_length": rows[0]["length"]}
        results = make_results(
            records,
            run=policy,
            checkpoint=str(ckpt),
            model_config=meta["config"]["model"],
            train_length=cfg.data.seq_len,
            policy=policy,
            settings={
                "n_tokens": n_tokens,
                "split": "test",
                "corpus": cfg.data.corpus,
                "bytes_per_token": bytes_per_token,
            },
            classification=classification,
        )
        save_results(results, out / "results", policy.replace(":", ""), force=True)
        outcomes.append(
            RunOutcome(policy, run_dir, results, train_seconds, time.perf_counter() - t0)
        )
        print(format_table(records, bytes_per_token is not None))

    figure = _plot(outcomes, out)
    summary = _summary(outcomes, lengths, protocols, time.perf_counter() - started, figure)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    report = _report(summary, configs, outcomes)
    (out / "report.md").write_text(report)
    print()
    print(_comparison_table(summary))
    for row in summary["runs"]:
        print(
            f"{row['policy']:>10}: {row['extension']['reset']['kind']} length extension (reset protocol), "
            f"gap {row['extension']['reset']['gap']:.4f} nats"
        )
    print(f"wrote {out}/report.md, {out}/summary.json and the figure {figure}")
    return 0


def _plot(outcomes: list[RunOutcome], out: Path) -> str:
    try:
        from longssm.eval.plots import plot_lengths
    except ImportError:
        return "(matplotlib not installed: no figure; pip install 'longssm[plot]')"
    paths = plot_lengths([o.results for o in outcomes], out / "extension")
    return str(paths[0])


def _summary(outcomes, lengths, protocols, seconds, figure) -> dict:
    runs = []
    for o in outcomes:
        losses = {
            p: {r["length"]: r["loss"] for r in o.results["records"] if r["protocol"] == p}
            for p in protocols
        }
        runs.append(
            {
                "policy": o.policy,
                "run_dir": str(o.run_dir),
                "train_seconds": round(o.train_seconds, 1),
                "eval_seconds": round(o.eval_seconds, 1),
                "loss": losses,
                "extension": o.results["classification"],
            }
        )
    return {
        "lengths": lengths,
        "protocols": protocols,
        "runs": runs,
        "wall_seconds": round(seconds, 1),
        "figure": figure,
    }


def _comparison_table(summary: dict) -> str:
    """Loss (nats/token) at each L: one column per (policy, protocol)."""
    cols = [(r["policy"], p) for r in summary["runs"] for p in summary["protocols"]]
    head = f"{'L':>7} " + " ".join(f"{(pol + '/' + prot):>18}" for pol, prot in cols)
    lines = [head]
    by_policy = {r["policy"]: r for r in summary["runs"]}
    for L in summary["lengths"]:
        cells = []
        for pol, prot in cols:
            value = by_policy[pol]["loss"][prot].get(L)
            cells.append(f"{value:>18.4f}" if value is not None else f"{'-':>18}")
        lines.append(f"{L:>7} " + " ".join(cells))
    return "\n".join(lines)


def _report(summary: dict, configs: dict, outcomes) -> str:
    first_cfg = next(iter(configs.values()))[0]
    lines = [
        "# Length extension: zero- vs previous-initialised hidden states",
        "",
        f"Model: {first_cfg.model.mixer}, d_model {first_cfg.model.d_model}, {first_cfg.model.n_layers} layers, "
        f"d_state {first_cfg.model.d_state}; corpus `{first_cfg.data.corpus}`; training length "
        f"T = {first_cfg.data.seq_len}; {first_cfg.train.steps} steps of "
        f"{first_cfg.data.effective_batch_size} x {first_cfg.data.seq_len} tokens. "
        f"Wall time {summary['wall_seconds']:.0f} s.",
        "",
        "Loss in nats per token on the test split (lower is better):",
        "",
        "```",
        _comparison_table(summary),
        "```",
        "",
        "Extension type (LongSSM Definition 2.1, lengths >= T):",
        "",
        "| policy | protocol | type | L0 | gap loss(L_max) - min loss |",
        "|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        for protocol, v in run["extension"].items():
            lines.append(
                f"| {run['policy']} | {protocol} | {v['kind']} | {v['l0']} | {v['gap']:.4f} |"
            )
    lines += ["", f"![loss versus evaluation length]({Path(summary['figure']).name})", ""]
    return "\n".join(lines)
