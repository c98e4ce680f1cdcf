"""The ``longssm`` command line: train | eval | extend | plot | generate | corpus | task | adapt |
prune | analyze | export.

Every expected failure prints one line ``longssm: error: ...`` and exits with code 2: bad input
(missing paths, invalid config values, corrupt checkpoints), the file system refusing (a read-only
folder, a full disk: ``OSError`` and its kin), safetensors errors, a model too large to allocate,
and a run that diverges. Nothing already on disk is overwritten. Anything else is a bug: one line
``longssm: internal error: ...`` with "run with --debug for the traceback", exit code 1;
``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from safetensors import SafetensorError

from longssm.eval.cli import add_eval_arguments, add_plot_arguments
from longssm.extend import add_extend_arguments
from longssm.train import NonFiniteError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    SafetensorError,
    MemoryError,
    NonFiniteError,
)


class UsageError(ValueError):
    """A command line argparse cannot parse (one line, exit 2 like any bad input)."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors as ``UsageError`` instead of a usage block and ``sys.exit``."""

    def error(self, message: str):
        raise UsageError(f"{self.prog.split()[-1]}: {message}")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (config file and/or --section.key=value overrides)",
        description="Train an SSM language model. Overrides: --model.d_model=64 --train.policy=zero "
        "--data.seq_len=16 ... (see docs/configuration.md).",
    )
    p.add_argument("config", nargs="?", help="TOML or YAML run config (default: built-in defaults)")
    p.add_argument("--out", help="run directory (default: runs/<mixer>-<policy>-T<seq_len>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--init-from", default=None, metavar="SRC",
                   help="start from a longssm run or checkpoint, a local Hugging Face "
                   "Mamba/Mamba-2 directory, or a lora:R/full adapted run (merged) "
                   "(architecture, weights and tokenizer from it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args, overrides: list[str]) -> int:
    from longssm.config import RunConfig, apply_overrides, load_run_config
    from longssm.train.loop import train
    from longssm.train.run import resume_base_config

    if args.out is not None and not args.out.strip():
        raise ValueError("--out must name a folder, got an empty string")
    if args.init_from is not None and not args.resume:
        from longssm.interop.pretrained import pretrained_run_config

        cfg = pretrained_run_config(args.config, overrides, args.init_from)
    else:
        cfg = load_run_config(args.config, overrides)
    out = (
        args.out
        or f"runs/{cfg.model.mixer}-{cfg.train.policy.replace(':', '')}-T{cfg.data.seq_len}"
    )
    if args.resume and args.config is None:
        # the run's own config, with the command line's overrides on top
        cfg = RunConfig.from_dict(apply_overrides(resume_base_config(out), overrides))
    if args.quiet:
        cfg.train.progress = False
    result = train(cfg, out, resume=args.resume)
    # under torchrun only rank 0 reports (the others hold no validation numbers)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    vr = "n/a" if result.val_loss_reset is None else f"{result.val_loss_reset:.4f}"
    vs = "n/a" if result.val_loss_stream is None else f"{result.val_loss_stream:.4f}"
    print(
        f"done: {result.step} steps, train loss {result.train_loss:.4f}, val loss at T (zero init) "
        f"{vr}, (carried) {vs}, {result.seconds:.1f}s -> {result.run_dir}"
    )
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a trained run, checkpoint or HF dir")
    p.add_argument("checkpoint", help="run, checkpoint or Hugging Face Mamba directory")
    p.add_argument(
        "--prompt", default="def ", help="prompt text (space-separated ids for symbol corpora)"
    )
    p.add_argument("-n", "--num-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def _check_generate_args(args) -> None:
    if not math.isfinite(args.temperature) or not (
        args.temperature == 0 or 1e-3 <= args.temperature <= 1e3
    ):
        raise ValueError(
            f"--temperature must be 0 (greedy) or a number in [0.001, 1000], got {args.temperature}"
        )
    if args.num_tokens < 0:
        raise ValueError(f"--num-tokens must be >= 0, got {args.num_tokens}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must lie in [0, 2**63), got {args.seed}")


def _run_generate(args, overrides: list[str]) -> int:
    import torch

    from longssm.checkpoint import load_tokenizer
    from longssm.dist import resolve_device
    from longssm.interop.pretrained import load_source

    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    _check_generate_args(args)
    model, ckpt, meta = load_source(args.checkpoint, device=resolve_device(args.device, "--device"))
    tokenizer = load_tokenizer(meta, ckpt)
    # a symbol corpus (markov:) has its own vocabulary; a pretrained embedding may be padded
    corpus = str(meta["config"].get("data", {}).get("corpus", ""))
    symbols = corpus.startswith("markov:") or model.cfg.vocab_size < tokenizer.vocab_size
    if symbols:
        # a symbol corpus (markov:): the prompt is space-separated ids, the output too
        try:
            ids = [int(t) for t in args.prompt.split()] or [0]
        except ValueError as exc:
            raise ValueError(
                "this model was trained on symbols: give --prompt as space-separated integer ids"
            ) from exc
    else:
        ids = [tokenizer.sep_id] + list(tokenizer.encode(args.prompt))
    if any(not 0 <= i < model.cfg.vocab_size for i in ids):
        raise ValueError(f"--prompt ids must lie in [0, {model.cfg.vocab_size})")
    prompt = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    gen = torch.Generator().manual_seed(args.seed)  # on the CPU: the same samples on any device
    tokens, _ = model.generate(
        prompt, args.num_tokens, temperature=args.temperature, top_k=args.top_k, generator=gen
    )
    if symbols:
        print(" ".join(str(t) for t in ids + tokens[0].tolist()))
    else:
        print(args.prompt + tokenizer.decode(tokens[0].tolist()))
    return 0


def _add_corpus(sub) -> None:
    p = sub.add_parser("corpus", help="describe a corpus spec: documents and tokens per split")
    p.add_argument("spec", nargs="?", default="python-stdlib")
    p.add_argument("--tokenizer", default="bytes", help="bytes, hf:PATH or a BPE .json file")
    p.add_argument("--text-field", default="text", help="text column of table corpora")


def _run_corpus(args, overrides: list[str]) -> int:
    from longssm.data import get_tokenizer, load_corpus

    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    tokenizer = get_tokenizer("byte" if args.tokenizer == "bytes" else args.tokenizer)
    for split in ("train", "validation", "test"):
        corpus = load_corpus(args.spec, tokenizer, split, text_field=args.text_field)
        print(
            f"{split:>10}: {len(corpus.doc_starts):>6} documents, {len(corpus.tokens):>12,} tokens"
        )
    return 0


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="state-, prefix-, LoRA- or fully tune a trained run on another corpus")
    p.add_argument("run", help="base run directory or checkpoint directory")
    p.add_argument("--method", required=True,
                   help="initial-state, state-offset-h, state-offset-y, prefix:K, "
                   "lora:R[:ALPHA] or full")
    p.add_argument("--corpus", required=True, help="corpus spec to adapt to")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", required=True, help="new directory for the adapter (never overwritten)")
    p.add_argument("--seq-len", type=int, default=None, help="T (default: the base run's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--eval-windows", type=int, default=32, help="held-out windows scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_adapt(args) -> int:
    from longssm.adapt import AdaptSettings, adapt_run
    from longssm.dist import resolve_device

    settings = AdaptSettings(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size,
                             lr=args.lr, eval_windows=args.eval_windows, seed=args.seed,
                             progress=not args.quiet)
    s = adapt_run(args.run, args.method, args.corpus, args.out, settings,
                  device=resolve_device(args.device, "--device"))
    b, a, g = s["heldout_before"], s["heldout_after"], s["heldout_gain"]
    print(f"{s['method']}: {s['trainable_parameters']:,} trainable parameters "
          f"(base {s['base_parameters']:,}); held-out loss {b['loss']:.4f} "
          f"[{b['loss_low']:.4f}, {b['loss_high']:.4f}] -> {a['loss']:.4f} "
          f"[{a['loss_low']:.4f}, {a['loss_high']:.4f}], gain {g['gain']:.4f} "
          f"[{g['gain_low']:.4f}, {g['gain_high']:.4f}] -> {args.out}")
    return 0


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a trained run (unstructured, d_state or heads)")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--method", required=True,
                   help="magnitude, wanda, dstate-magnitude, dstate-taylor1, dstate-taylor2 or "
                   "heads (Mamba-2)")
    p.add_argument("--ratio", type=float, required=True, help="fraction pruned, in [0, 1)")
    p.add_argument("--calibration", type=int, default=32, help="calibration windows of T tokens")
    p.add_argument("--out", required=True, help="new run directory (never overwritten)")
    p.add_argument("--eval-length", type=int, default=None, help="scored window length (4 T)")
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def _run_prune(args) -> int:
    from longssm.adapt import prune_run
    from longssm.dist import resolve_device

    r = prune_run(args.run, args.method, args.ratio, args.out, calibration=args.calibration,
                  eval_length=args.eval_length, eval_windows=args.eval_windows,
                  device=resolve_device(args.device, "--device"))
    for when in ("before", "after"):
        x = r[when]
        print(f"{when:>6}: {x['parameters']:,} parameters ({x['nonzero']:,} non-zero), loss "
              f"{x['loss']:.4f} [{x['loss_low']:.4f}, {x['loss_high']:.4f}], "
              f"{x['tokens_per_second']:,.0f} tokens/s")
    print(f"wrote {args.out}")
    return 0


def _run_eval_reduce(args) -> int:
    """``longssm eval RUN --reduce ...``: token reduction lives in ``adapt`` (eval may not import
    it), so the command line calls it directly."""
    from longssm.adapt import parse_reduce, reduce_eval
    from longssm.dist import resolve_device
    from longssm.eval.lengths import parse_lengths

    if args.protocol != "reset":
        raise ValueError("--reduce scores the reset protocol only (each window from zero state)")
    if args.n_tokens < 1:
        raise ValueError(f"--n-tokens must be >= 1, got {args.n_tokens}")
    spec = parse_reduce(args.reduce, args.reduce_beyond)
    out = args.out or os.path.join(args.run, "eval")
    report, path = reduce_eval(args.run, spec, parse_lengths(args.lengths), out,
                               corpus=args.corpus, split=args.split, n_tokens=args.n_tokens,
                               name=args.name, force=args.force,
                               device=resolve_device(args.device, "--device"),
                               progress=not args.no_progress, batch_size=args.batch_size,
                               chunk_size=args.chunk_size)
    print(f"{'L':>7} {'kept':>6} {'plain (kept)':>26} {'reduced':>26} {'increase':>28}")
    for r in report["records"]:
        p, q = r["plain_at_kept"], r["reduced"]
        print(f"{r['length']:>7} {r['kept_positions']:>6} {p['loss']:>8.4f} [{p['loss_low']:.4f}, "
              f"{p['loss_high']:.4f}] {q['loss']:>8.4f} [{q['loss_low']:.4f}, {q['loss_high']:.4f}] "
              f"{r['increase']:>+8.4f} [{r['increase_low']:+.4f}, {r['increase_high']:+.4f}]")
    print(f"wrote {path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a run's model as a Hugging Face directory")
    p.add_argument("run", help="run directory or checkpoint directory (mamba or mamba2)")
    p.add_argument("--hf", required=True, metavar="OUT",
                   help="new directory: config.json, model.safetensors, tokenizer.json")


def _run_export(args) -> int:
    from longssm.interop.pretrained import export_hf

    print(f"wrote {export_hf(args.run, args.hf)}")
    return 0


def _add_task(sub) -> None:
    p = sub.add_parser(
        "task",
        help="synthetic capability suite: train a tagger on short lengths, score per length bin",
        description="Train on --train-lengths, evaluate per length bin with 95% intervals, write "
        "JSON. NAME 'suite' runs the matrix tasks x mixers x depths (docs/tasks.md).",
    )
    p.add_argument("name", help="a task (parity, dyck1, a5, mem-polynomial, ...) or 'suite'")
    p.add_argument("--mixer", default="mamba", help="registry name[+option=value...], e.g. "
                   "s4d+eigen=direct")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--train-lengths", default="1:50", help="a:b")
    p.add_argument("--test-lengths", default=None, help="bins a:b,c:d (default: up to 10x)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small model, few steps (CPU minutes)")
    p.add_argument("--out", default=None, help="JSON file (suite: a directory, default "
                   "docs/results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--policy", default="zero", help="state policy of each training segment "
                   "(zero, previous, passing, noise, fitted-noise, learned, p-reset:P)")
    p.add_argument("--segments", type=int, default=1, help="pieces per training sequence, one "
                   "optimiser step each (the policy sets each piece's initial state)")
    p.add_argument("--no-reset", action="store_true", help="carry the state across sequences "
                   "too (no reset at a new sequence)")
    p.add_argument("--protocol", default="reset", choices=["reset", "carried", "both"],
                   help="evaluate in one pass from zeros, in segments of the training length with "
                   "the state carried, or both")
    p.add_argument("--run-dir", default=None, help="write checkpoints here (safetensors + JSON)")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --run-dir's latest "
                   "checkpoint")


def _run_task(args) -> int:
    from longssm.tasks import run_suite, run_task

    if args.layers < 1:
        raise ValueError(f"--layers must be >= 1, got {args.layers}")
    if args.name == "suite":
        run_suite(args.out or "docs/results", quick=args.quick, seed=args.seed)
        return 0
    run_task(args.name, mixer=args.mixer, layers=args.layers, train_lengths=args.train_lengths,
             test_lengths=args.test_lengths, quick=args.quick, steps=args.steps, seed=args.seed,
             out=args.out, progress=not args.quiet, policy=args.policy, segments=args.segments,
             reset_between_sequences=not args.no_reset,
             protocols=("reset", "carried") if args.protocol == "both" else (args.protocol,),
             run_dir=args.run_dir, checkpoint_every=args.checkpoint_every, resume=args.resume)
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="hidden attention, state reliance, HiPPO-Prophecy (docs/analysis.md)")
    what = p.add_subparsers(dest="what", required=True)
    a = what.add_parser("attention", help="hidden-attention heatmaps of a trained run")
    a.add_argument("run", help="run directory or checkpoint")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to analyse")
    src.add_argument("--from-split", dest="split", choices=["train", "validation", "test"])
    a.add_argument("--layer", type=int, default=None, help="block index (default: every layer)")
    a.add_argument("--kind", choices=["scan", "block"], default="scan")
    a.add_argument("--max-length", type=int, default=128, help="most tokens analysed")
    a.add_argument("--channels", type=_int_list, default=[], help="units drawn one by one, e.g. 0,5")
    a.add_argument("--offset", type=int, default=0, help="first token of the window (--from-split)")
    a.add_argument("--warmup", type=int, default=0, help="tokens before the window run first; "
                   "their final state is carried in (--from-split)")
    a.add_argument("--out", required=True, help="figure path (.png/.svg/.pdf); JSON beside it")
    r = what.add_parser("reliance", help="how much of each output comes from the carried state")
    r.add_argument("runs", nargs="+", help="one or more runs (e.g. zero- and previous-init)")
    r.add_argument("--lengths", type=_int_list, default=[1, 16, 256, 4096], help="positions t to report")
    r.add_argument("--rows", type=int, default=16, help="text windows averaged (the interval's sample)")
    r.add_argument("--split", default="test", choices=["train", "validation", "test"])
    r.add_argument("--out", required=True)
    r.add_argument("--quiet", action="store_true")
    f = what.add_parser("prophecy", help="one-step forecasts of a fixed-weight HiPPO SSM")
    f.add_argument("--signal", default="damped", help="damped | vdp | lorenz")
    f.add_argument("--N", dest="sizes", type=_int_list, default=[8, 16, 32, 64])
    f.add_argument("--dt", dest="dts", type=_float_list, default=[0.01, 0.02, 0.05])
    f.add_argument("--theta", type=float, default=1.0, help="memory window θ")
    f.add_argument("--measure", default="legt", help="legt | legs | lagt")
    f.add_argument("--replicates", type=int, default=8)
    f.add_argument("--out", required=True)
    f.add_argument("--quiet", action="store_true")


def _run_analyze(args) -> int:
    from longssm.analysis import commands

    if args.what == "attention":
        commands.analyze_attention(
            args.run, args.out, text=args.text, split=args.split, layer=args.layer, kind=args.kind,
            max_length=args.max_length, channels=args.channels, offset=args.offset, warmup=args.warmup,
        )
    elif args.what == "reliance":
        commands.analyze_reliance(args.runs, args.out, args.lengths, args.rows, args.split, not args.quiet)
    else:
        commands.analyze_prophecy(args.out, args.signal, args.sizes, args.dts, args.theta, args.measure,
                                  args.replicates, not args.quiet)
    print(f"wrote {args.out} and its JSON")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="longssm",
        description="State-space language models trained short, evaluated long (LongSSM).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    add_eval_arguments(sub.add_parser("eval", help="perplexity versus evaluation length"))
    add_extend_arguments(
        sub.add_parser("extend", help="the length-extension experiment: zero vs previous init")
    )
    add_plot_arguments(sub.add_parser("plot", help="redraw figures from saved results"))
    _add_generate(sub)
    _add_corpus(sub)
    _add_analyze(sub)
    _add_task(sub)
    _add_adapt(sub)
    _add_prune(sub)
    _add_export(sub)
    for command in sub.choices.values():
        # ``longssm train ... --debug`` works too; SUPPRESS keeps the top level's value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of any error")
    return parser


def run_command(args, overrides: list[str]) -> int:
    if args.command == "train":
        return _run_train(args, overrides)
    if args.command == "generate":
        return _run_generate(args, overrides)
    if args.command == "corpus":
        return _run_corpus(args, overrides)
    if args.command == "extend":
        from longssm.extend import run_extend

        return run_extend(args, overrides)
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    if args.command == "eval" and args.reduce is not None:
        return _run_eval_reduce(args)
    if args.command == "eval":
        from longssm.eval.cli import run_eval

        return run_eval(args)
    if args.command == "adapt":
        return _run_adapt(args)
    if args.command == "prune":
        return _run_prune(args)
    if args.command == "plot":
        from longssm.eval.cli import run_plot

        return run_plot(args)
    if args.command == "task":
        return _run_task(args)
    if args.command == "analyze":
        return _run_analyze(args)
    if args.command == "export":
        return _run_export(args)
    raise ValueError(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args, overrides = parser.parse_known_args(argv)
        except SystemExit as exc:
            # --help / --version: argparse printed what was asked for
            return exc.code if isinstance(exc.code, int) else 0
        if args.command not in ("train", "extend") and overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        from longssm.runtime import keep_freed_memory

        keep_freed_memory()  # this process is the command's (see longssm.runtime)
        return run_command(args, overrides)
    except KeyboardInterrupt:
        print("longssm: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"longssm: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"longssm: internal error: {type(exc).__name__}: {error_line(exc)} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def error_line(exc: BaseException) -> str:
    """The one line a user sees for ``exc``."""
    text = " ".join(str(exc).split()) if str(exc).strip() else ""
    if isinstance(exc, NonFiniteError) and not text.startswith("training diverged"):
        return f"training diverged: {text}"
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + text if text else ''}"
    if isinstance(exc, SafetensorError):
        return f"safetensors: {text}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
