"""The ``longssm eval`` and ``longssm plot`` subcommands (wired into ``longssm.cli``).

    longssm eval RUN_OR_CHECKPOINT --lengths 16:32768 --protocol all --split test --out DIR
    longssm plot RESULTS... --kind lengths|sweep|heatmap|size-heatmap|positions --out FILE

Argument parsing and one call each: ``eval`` loads the model
(``longssm.interop.pretrained.load_source``: a run, a checkpoint, a Hugging Face Mamba directory
or an adapted run) and calls ``longssm.eval.evaluate.evaluate_run``, which scores the held-out split with 95%
intervals, classifies each protocol's curve and writes ``results-<checkpoint>.json`` and ``.csv``
into ``--out`` (default ``<run>/eval/``), never replacing an existing file unless ``--force``
(``--tensorboard``: also the curves as TensorBoard scalars, ``longssm.eval.tensorboard``). Bad
input raises ``EvalError`` (a ``ValueError``) with a one-line message; the top-level CLI maps it
to exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longssm.eval.errors import EvalError
from longssm.eval.intervals import DEFAULT_CONFIDENCE
from longssm.eval.lengths import parse_lengths, resolve_protocols
from longssm.eval.results import find_results

DEFAULT_LENGTHS = "16:32768"
# names only: matplotlib is imported when a plot is drawn, not for ``longssm eval``
PLOT_KINDS = ("lengths", "sweep", "heatmap", "size-heatmap", "positions")
METRICS = ("loss", "perplexity", "bits_per_byte")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (its latest checkpoint), checkpoint directory "
                        "or local Hugging Face Mamba directory")
    parser.add_argument("--corpus", default=None,
                        help="corpus spec to score (default: the run's; required for an HF dir)")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS,
                        help="evaluation lengths: 16,32,64 or a doubling range 16:32768 (16, 32, ..., 32768)")
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
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help="level of the loss intervals and of the extension verdict")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled permutation")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--reduce", default=None, metavar="METHOD:KEEP[:LAYERS]",
                        help="token reduction (random, evit, tome, hybrid) after blocks LAYERS "
                        "(default 0); scores plain vs reduced at the kept positions "
                        "(docs/adapt.md)")
    parser.add_argument("--reduce-beyond", type=int, default=0, metavar="T",
                        help="with --reduce: only positions >= T are candidates")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the length curves as TensorBoard scalars under "
                        "RUN/tb/eval/<name> (with --out: OUT/tb/<name>)")


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise EvalError(f"--{name} must be >= 1, got {value}")


def _use_corpus(meta: dict, corpus: str | None, source) -> None:
    """Score ``corpus`` (``--corpus``) instead of the run's; an HF directory names none itself."""
    data = meta["config"].setdefault("data", {})
    if corpus is not None:
        if not corpus.strip():
            raise EvalError("--corpus must name a corpus spec, got an empty string")
        data["corpus"] = corpus
    elif meta.get("source") == "huggingface" and not data.get("corpus"):
        raise EvalError(f"{source} is a Hugging Face directory with no corpus of its own: give "
                        "--corpus SPEC")  # fmt: skip
    if meta.get("source") == "huggingface" and "tokenizer" not in meta:
        raise EvalError(f"{source} has no tokenizer.json: longssm cannot tokenise the corpus")


def run_eval(args: argparse.Namespace) -> int:
    """``longssm eval``: evaluate, print a table and the verdicts, write results. Returns 0."""
    from longssm.dist import env_world, init_distributed, resolve_device
    from longssm.eval.evaluate import (
        EvalSettings,
        describe_verdict,
        evaluate_run,
        format_table,
        run_dir_of,
    )
    from longssm.interop.pretrained import load_source

    lengths = parse_lengths(args.lengths)
    protocols = resolve_protocols(args.protocol)
    for name in ("n_tokens", "batch_size", "chunk_size", "positions_length", "effrem_length",
                 "effrem_sequences"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if not 0 < args.confidence < 1:
        raise EvalError(f"--confidence must lie in (0, 1), got {args.confidence}")
    if args.name is not None and (
        not args.name.strip() or args.name in (".", "..") or any(c in args.name for c in "/\\\0")
    ):
        raise EvalError(f"--name must be a plain file stem (no folders), got {args.name!r}")
    if args.out is not None and not args.out.strip():
        raise EvalError("--out must name a folder, got an empty string")
    if not Path(args.run).exists():
        raise EvalError(f"no such run or checkpoint: {args.run}")
    if args.tensorboard:
        from longssm.eval.tensorboard import check_tensorboard

        check_tensorboard()
    settings = EvalSettings(
        lengths, protocols, split=args.split, n_tokens=args.n_tokens, batch_size=args.batch_size,
        chunk_size=args.chunk_size, seed=args.seed, confidence=args.confidence,
        positions_length=(args.positions_length or max(lengths)) if args.positions else None,
        effrem_length=(args.effrem_length or max(lengths)) if args.effrem else None,
        effrem_sequences=args.effrem_sequences, progress=not args.no_progress,
    )
    # under torchrun the (protocol, L) pairs are spread over the ranks; rank 0 does the rest
    ctx = init_distributed(args.device) if env_world()[1] > 1 else None
    try:
        device = ctx.device if ctx is not None else resolve_device(args.device, "--device")
        model, ckpt, meta = load_source(args.run, device=device)
        _use_corpus(meta, args.corpus, ckpt)
        out = Path(args.out) if args.out else run_dir_of(ckpt) / "eval"
        tb = (Path(args.out) / "tb" if args.out else run_dir_of(ckpt) / "tb" / "eval")
        results, paths = evaluate_run(model, ckpt, meta, settings, out,
                                      args.name or f"results-{ckpt.name}", args.force, ctx,
                                      tensorboard=tb if args.tensorboard else None)
    except BaseException:
        if ctx is not None:
            ctx.close(sync=False)
        raise
    if ctx is not None:
        ctx.close()
    if paths is None:
        return 0
    print(format_table(results["records"], results["settings"]["bytes_per_token"] is not None))
    for protocol, verdict in results["classification"].items():
        print(f"{protocol}: {describe_verdict(verdict)}")
    if not results["classification"]:
        print(f"no verdict: fewer than 2 lengths >= the training length T={results['train_length']}")
    effrem = results["effrem"]
    if effrem is not None:
        pairs = ", ".join(f"t={t}: {v:.3f}" for t, v in zip(effrem["t"], effrem["effrem"]))
        print(f"EffRem_T={effrem['length']}: {pairs}")
    print(f"wrote {paths[0]} and {paths[1]}")
    if results.get("tensorboard"):
        print(f"wrote TensorBoard scalars to {results['tensorboard']}")
    return 0


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
