"""The ``longssm`` command line: train | eval | extend | plot | generate | corpus | analyze.

Bad input (missing paths, invalid config values, corrupt checkpoints) prints one line
``longssm: error: ...`` and exits with code 2; nothing already on disk is overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys

from longssm.eval.cli import add_eval_arguments, add_plot_arguments
from longssm.extend import add_extend_arguments
from longssm.train import NonFiniteError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


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
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_train(args, overrides: list[str]) -> int:
    from longssm.config import load_run_config
    from longssm.train.loop import train

    cfg = load_run_config(args.config, overrides)
    if args.quiet:
        cfg.train.progress = False
    out = (
        args.out
        or f"runs/{cfg.model.mixer}-{cfg.train.policy.replace(':', '')}-T{cfg.data.seq_len}"
    )
    if args.resume and args.config is None and not overrides:
        from longssm.checkpoint import read_meta, resolve_checkpoint
        from longssm.config import RunConfig

        cfg = RunConfig.from_dict(read_meta(resolve_checkpoint(out))["config"])
        cfg.train.progress = not args.quiet
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
    p = sub.add_parser("generate", help="sample text from a trained run or checkpoint")
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument(
        "--prompt", default="def ", help="prompt text (space-separated ids for symbol corpora)"
    )
    p.add_argument("-n", "--num-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def _run_generate(args, overrides: list[str]) -> int:
    import torch

    from longssm.checkpoint import load_model
    from longssm.data import tokenizer_from_dict
    from longssm.dist import resolve_device

    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    model, _, meta = load_model(args.checkpoint, device=resolve_device(args.device, "--device"))
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    symbols = model.cfg.vocab_size != tokenizer.vocab_size
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
    p.add_argument("--tokenizer", default="bytes")


def _run_corpus(args, overrides: list[str]) -> int:
    from longssm.data import get_tokenizer, load_corpus

    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    tokenizer = get_tokenizer("byte" if args.tokenizer == "bytes" else args.tokenizer)
    for split in ("train", "validation", "test"):
        corpus = load_corpus(args.spec, tokenizer, split)
        print(
            f"{split:>10}: {len(corpus.doc_starts):>6} documents, {len(corpus.tokens):>12,} tokens"
        )
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
    parser = argparse.ArgumentParser(
        prog="longssm",
        description="State-space language models trained short, evaluated long (LongSSM).",
    )
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
    if args.command == "eval":
        from longssm.eval.cli import run_eval

        return run_eval(args)
    if args.command == "plot":
        from longssm.eval.cli import run_plot

        return run_plot(args)
    if args.command == "analyze":
        return _run_analyze(args)
    raise ValueError(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if args.command not in ("train", "extend") and overrides:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        return run_command(args, overrides)
    except KeyboardInterrupt:
        print("longssm: interrupted", file=sys.stderr)
        return 130
    except NonFiniteError as exc:
        print(f"longssm: training diverged: {exc}", file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"longssm: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
