"""The ``longssm eval`` and ``longssm plot`` subcommands (wired into ``longssm.cli``).

    longssm eval RUN_OR_CHECKPOINT --lengths 16:32768 --protocol all --split test --out DIR
    longssm plot RESULTS... --kind lengths|sweep|heatmap|positions --out FILE

``eval`` loads the model with ``longssm.checkpoint.load_model``, the tokenizer from the checkpoint
metadata and the held-out split of the run's corpus with ``longssm.data.load_corpus``, prints a
table and writes ``results-<checkpoint>.json`` and ``.csv`` into ``--out`` (default
``<run>/eval/``), never replacing an existing file unless ``--force``. Bad input raises
``EvalError`` (a ``ValueError``) with a one-line message; the top-level CLI maps it to exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from longssm.eval.classify import DEFAULT_TOL, classify_extension
from longssm.eval.effrem import effective_remembrance
from longssm.eval.errors import EvalError
from longssm.eval.lengths import check_lengths, evaluate_lengths, resolve_protocols
from longssm.eval.positions import position_curve
from longssm.eval.results import find_results, make_results, records_of, save_results

DEFAULT_LENGTHS = "16:32768"
# names only: matplotlib is imported when a plot is drawn, not for ``longssm eval``
PLOT_KINDS = ("lengths", "sweep", "heatmap", "positions")
METRICS = ("loss", "perplexity", "bits_per_byte")


def parse_lengths(text: str) -> list[int]:
    """``"16,32,100"`` -> those; ``"16:32768"`` -> powers of two 16, 32, ..., 32768 (inclusive).

    Items may be mixed: ``"10,16:64"``. Raises ``EvalError`` on anything else.
    """
    lengths: list[int] = []
    for item in str(text).replace(" ", "").split(","):
        if re.fullmatch(r"[0-9]+", item):
            lengths.append(int(item))
        elif m := re.fullmatch(r"([0-9]+):([0-9]+)", item):
            lo, hi = int(m[1]), int(m[2])
            if lo < 1 or hi < lo:
                raise EvalError(f"bad length range {item!r}: need 1 <= LOW <= HIGH")
            L = lo
            while L <= hi:
                lengths.append(L)
                L *= 2
        else:
            raise EvalError(
                f"bad lengths {text!r}: expected a comma list like 16,32,64 or a range like 16:32768"
            )
    if any(L < 1 for L in lengths):
        raise EvalError(f"lengths must be >= 1, got {text!r}")
    return check_lengths(lengths)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (its latest checkpoint) or checkpoint directory")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS,
                        help="evaluation lengths: 16,32,64 or a power-of-two range 16:32768")
    parser.add_argument("--protocol", default="reset",
                        help="reset (zero state per window), stream, shuffled, or all")
    parser.add_argument("--split", default="test", help="corpus split: test, validation or train")
    parser.add_argument("--n-tokens", type=int, default=1 << 16,
                        help="target tokens scored at every length (budget permitting)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows processed together")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="tokens per forward call (memory, not results)")
    parser.add_argument("--out", default=None, help="output directory (default <run>/eval/)")
    parser.add_argument("--name", default=None, help="results file stem (default results-<ckpt>)")
    parser.add_argument("--force", action="store_true", help="overwrite existing results files")
    parser.add_argument("--positions", action="store_true",
                        help="also record per-position loss and state norms")
    parser.add_argument("--positions-length", type=int, default=None,
                        help="window length of the per-position curves (default the longest)")
    parser.add_argument("--effrem", action="store_true", help="also compute Effective Remembrance")
    parser.add_argument("--effrem-length", type=int, default=None,
                        help="context length T of Effective Remembrance (default the longest)")
    parser.add_argument("--effrem-sequences", type=int, default=8, help="sequences averaged")
    parser.add_argument("--tol", type=float, default=DEFAULT_TOL,
                        help="tolerance (nats) of the extension classifier")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled permutation")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise EvalError(f"unknown device {name!r}; expected cpu, cuda or auto")
    return name


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise EvalError(f"--{name} must be >= 1, got {value}")


def load_split(meta: dict, split: str):
    """The held-out split of the run's corpus. Returns (tokens, bytes_per_token or None)."""
    from longssm.data import load_corpus, tokenizer_from_dict

    data = meta["config"].get("data", {})
    tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
    corpus = load_corpus(
        data.get("corpus", "python-stdlib"), tokenizer, split=split,
        cache_dir=data.get("cache_dir") or None,
    )
    tokens = corpus.tokens
    bytes_per_token = corpus.num_bytes / len(tokens) if corpus.num_bytes > 0 else None
    return tokens, bytes_per_token


def run_dir_of(checkpoint: Path) -> Path:
    """``run/`` for ``run/checkpoints/ckpt-N``; the checkpoint itself otherwise."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def run_eval(args: argparse.Namespace) -> int:
    """``longssm eval``: evaluate, print a table, write results. Returns the exit code (0)."""
    from longssm.checkpoint import load_model
    from longssm.dist import env_world, init_distributed
    from longssm.eval.lengths import evaluate_lengths_sharded

    lengths = parse_lengths(args.lengths)
    protocols = resolve_protocols(args.protocol)
    for name in ("n_tokens", "batch_size", "chunk_size", "positions_length", "effrem_length",
                 "effrem_sequences"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if not Path(args.run).exists():
        raise EvalError(f"no such run or checkpoint: {args.run}")
    progress = not args.no_progress
    device = _device(args.device)
    if env_world()[1] > 1:
        # Under torchrun the (protocol, L) pairs are spread over the ranks; rank 0 gathers the
        # records (equal to one process's) and does everything else.
        ctx = init_distributed(device)
        try:
            model, ckpt, meta = load_model(args.run, device=ctx.device)
            tokens, bytes_per_token = load_split(meta, args.split)
            records = evaluate_lengths_sharded(
                model, tokens, lengths, ctx, protocols, n_tokens=args.n_tokens,
                batch_size=args.batch_size, seed=args.seed, chunk_size=args.chunk_size,
                bytes_per_token=bytes_per_token or 1.0, progress=progress and ctx.is_main,
            )
        finally:
            ctx.close()
        if not ctx.is_main:
            return 0
    else:
        model, ckpt, meta = load_model(args.run, device=device)
        tokens, bytes_per_token = load_split(meta, args.split)
        records = evaluate_lengths(
            model, tokens, lengths, protocols, n_tokens=args.n_tokens,
            batch_size=args.batch_size, chunk_size=args.chunk_size,
            bytes_per_token=bytes_per_token or 1.0, progress=progress, seed=args.seed,
        )
    train_length = meta["config"].get("data", {}).get("seq_len")
    classification = {}
    for protocol in protocols:
        rows = records_of({"records": records}, protocol)
        usable = [r for r in rows if train_length is None or r["length"] >= train_length]
        rows = usable if len(usable) >= 2 else rows
        if len(rows) >= 2:
            verdict = classify_extension([r["length"] for r in rows], [r["loss"] for r in rows],
                                         tol=args.tol)
            classification[protocol] = {**verdict.to_dict(), "from_length": rows[0]["length"]}
    positions = []
    if args.positions:
        L = args.positions_length or max(lengths)
        positions = [
            position_curve(model, tokens, L, p, n_tokens=args.n_tokens, batch_size=args.batch_size,
                           chunk_size=args.chunk_size, progress=progress, start=max(lengths + [L]),
                           seed=args.seed)
            for p in protocols
        ]
    effrem = None
    if args.effrem:
        effrem = effective_remembrance(
            model, tokens, args.effrem_length or max(lengths), n_sequences=args.effrem_sequences,
            batch_size=args.batch_size, chunk_size=args.chunk_size, progress=progress,
        )
    settings = {
        "split": args.split, "n_tokens": args.n_tokens, "batch_size": args.batch_size,
        "chunk_size": args.chunk_size, "bytes_per_token": bytes_per_token, "seed": args.seed,
        "tol": args.tol, "corpus": meta["config"].get("data", {}).get("corpus"),
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    results = make_results(
        records, run=run_dir_of(ckpt).name, checkpoint=str(ckpt), model_config=meta["config"]["model"],
        train_length=train_length, policy=meta["config"].get("train", {}).get("policy"),
        settings=settings, classification=classification, positions=positions, effrem=effrem,
    )
    out = Path(args.out) if args.out else run_dir_of(ckpt) / "eval"
    json_path, csv_path = save_results(results, out, args.name or f"results-{ckpt.name}", args.force)
    print(format_table(records, bytes_per_token is not None))
    for protocol, verdict in classification.items():
        l0 = f" from L0={verdict['l0']}" if verdict["l0"] is not None else ""
        print(f"{protocol}: {verdict['kind']} length extension{l0} (tol {verdict['tol']} nats, "
              f"gap {verdict['gap']:.4f}, lengths >= {verdict['from_length']})")
    if effrem is not None:
        pairs = ", ".join(f"t={t}: {v:.3f}" for t, v in zip(effrem["t"], effrem["effrem"]))
        print(f"EffRem_T={effrem['length']}: {pairs}")
    print(f"wrote {json_path} and {csv_path}")
    return 0


def format_table(records: list[dict], has_bytes: bool = True) -> str:
    """A fixed-width table of the records."""
    unit = "bits/byte" if has_bytes else "bits/tok"
    lines = [f"{'protocol':<9} {'L':>7} {'loss':>8} {'ppl':>10} {unit:>9} {'tokens':>9}"]
    for r in records:
        lines.append(
            f"{r['protocol']:<9} {r['length']:>7} {r['loss']:>8.4f} {r['perplexity']:>10.3f} "
            f"{r['bits_per_byte']:>9.4f} {r['n_tokens']:>9}"
        )
    return "\n".join(lines)


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="results JSON files or directories of them")
    parser.add_argument("--kind", default="lengths", help=f"one of {', '.join(PLOT_KINDS)}")
    parser.add_argument("--out", required=True,
                        help="figure path (.png, .svg or .pdf; no suffix writes .png and .svg)")
    parser.add_argument("--protocol", default="reset", help="protocol of sweep and heatmap plots")
    parser.add_argument("--metric", default="loss", help=f"one of {', '.join(METRICS)}")


def run_plot(args: argparse.Namespace) -> int:
    """``longssm plot``: draw one figure from saved results. Returns the exit code (0)."""
    if args.kind not in PLOT_KINDS:
        raise EvalError(f"unknown plot kind {args.kind!r}; expected one of {', '.join(PLOT_KINDS)}")
    from longssm.eval.plots import PLOTS

    results = find_results(args.results)
    if args.kind == "positions":
        paths = PLOTS["positions"](results, args.out)
    elif args.kind == "lengths":
        paths = PLOTS["lengths"](results, args.out, metric=args.metric)
    else:
        resolve_protocols(args.protocol)
        paths = PLOTS[args.kind](results, args.out, protocol=args.protocol, metric=args.metric)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m longssm.eval.cli eval|plot ...``) until the top-level CLI."""
    parser = argparse.ArgumentParser(prog="longssm")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_arguments(sub.add_parser("eval", help="perplexity versus evaluation length"))
    add_plot_arguments(sub.add_parser("plot", help="figures from results JSON"))
    args = parser.parse_args(argv)
    try:
        return run_eval(args) if args.command == "eval" else run_plot(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
