"""Evaluate a trained model, classify its curves and save the results: what ``eval`` and ``extend`` share.

    settings = EvalSettings(lengths=[16, 32, ..., 8192], protocols=["reset"], n_tokens=8192)
    results, paths = evaluate_run(model, checkpoint, meta, settings, out_dir, "results-ckpt")

``evaluate_run`` scores the held-out split at every (protocol, L) with intervals
(``evaluate_lengths``, or ``evaluate_lengths_sharded`` under torchrun), classifies each protocol's
curve over the lengths >= the run's training length (``classify_records``), optionally adds
per-position curves and Effective Remembrance, and writes ``NAME.json`` and ``NAME.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longssm.dist import DistContext
from longssm.eval.classify import classify_records
from longssm.eval.effrem import effective_remembrance
from longssm.eval.errors import EvalError
from longssm.eval.intervals import DEFAULT_CONFIDENCE, half_width
from longssm.eval.lengths import evaluate_lengths, evaluate_lengths_sharded
from longssm.eval.positions import position_curve
from longssm.eval.results import free_stem, make_results, records_of, save_results


@dataclass
class EvalSettings:
    """What to score and how (every field is recorded in the results' ``settings``).

    Attributes:
        lengths: evaluation lengths L. protocols: reset / stream / shuffled names.
        split: corpus split. n_tokens: targets scored per (protocol, L).
        batch_size: rows processed together. chunk_size: tokens per forward call.
        seed: shuffled permutation and bootstrap seed. confidence: interval level.
        positions_length: window length of per-position curves (None: no curves).
        effrem_length: context length of Effective Remembrance (None: not computed).
        effrem_sequences: sequences averaged for Effective Remembrance.
        progress: show progress bars.
    """

    lengths: list[int]
    protocols: list[str]
    split: str = "test"
    n_tokens: int = 1 << 16
    batch_size: int = 8
    chunk_size: int = 1024
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE
    positions_length: int | None = None
    effrem_length: int | None = None
    effrem_sequences: int = 8
    progress: bool = True


def load_split(meta: dict, split: str):
    """The given split of the run's corpus. Returns (tokens, bytes_per_token or None)."""
    from longssm.data import load_corpus, tokenizer_from_dict

    data = meta["config"].get("data", {})
    tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
    corpus = load_corpus(
        data.get("corpus", "python-stdlib"), tokenizer, split=split,
        cache_dir=data.get("cache_dir") or None, text_field=data.get("text_field", "text"),
    )
    tokens = corpus.tokens
    bytes_per_token = corpus.num_bytes / len(tokens) if corpus.num_bytes > 0 else None
    return tokens, bytes_per_token


def run_dir_of(checkpoint: Path) -> Path:
    """``run/`` for ``run/checkpoints/ckpt-N``; the checkpoint itself otherwise."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def classify_protocols(
    records: list[dict], protocols, train_length: int | None, confidence: float, seed: int = 0
) -> dict:
    """Per protocol, the verdict over lengths >= ``train_length`` (skipped with < 2 such lengths)."""
    verdicts = {}
    for protocol in protocols:
        rows = [
            r for r in records_of({"records": records}, protocol)
            if train_length is None or r["length"] >= train_length
        ]
        if len(rows) >= 2:
            verdicts[protocol] = classify_records(rows, None, confidence, seed=seed).to_dict()
    return verdicts


def evaluate_run(
    model,
    checkpoint: Path,
    meta: dict,
    settings: EvalSettings,
    out_dir: Path | None = None,
    name: str = "results",
    force: bool = False,
    ctx: DistContext | None = None,
    run_name: str | None = None,
    tensorboard: Path | None = None,
) -> tuple[dict, tuple[Path, Path] | None]:
    """Score, classify and (with ``out_dir``) save; see the module docstring.

    Args:
        model: the trained model (eval mode is set and restored inside).
        checkpoint: the checkpoint it came from. meta: that checkpoint's metadata.
        settings: ``EvalSettings``.
        out_dir, name, force: where to write ``name.json``/``name.csv`` (never overwriting
            unless ``force``); None writes nothing.
        ctx: a ``DistContext`` with world_size > 1 to spread the (protocol, L) pairs over ranks;
            only rank 0 then classifies and writes (the others return ``({}, None)``).
        run_name: the run's name in the results (default: the run directory's name).
        tensorboard: also write the length curves as TensorBoard scalars into
            ``tensorboard/<stem>`` (``longssm.eval.tensorboard``; needs ``out_dir``).

    Returns:
        (results document, (json path, csv path) or None).
    """
    s = settings
    tokens, bytes_per_token = load_split(meta, s.split)
    common = dict(n_tokens=s.n_tokens, batch_size=s.batch_size, seed=s.seed, chunk_size=s.chunk_size,
                  bytes_per_token=bytes_per_token or 1.0, confidence=s.confidence)
    if ctx is not None and ctx.enabled:
        records = evaluate_lengths_sharded(model, tokens, s.lengths, ctx, s.protocols,
                                           progress=s.progress and ctx.is_main, **common)
        if not ctx.is_main:
            return {}, None
    else:
        records = evaluate_lengths(model, tokens, s.lengths, s.protocols, progress=s.progress,
                                   **common)
    config = meta["config"]
    train_length = config.get("data", {}).get("seq_len")
    classification = classify_protocols(records, s.protocols, train_length, s.confidence, s.seed)
    positions = [
        position_curve(model, tokens, s.positions_length, p, n_tokens=s.n_tokens,
                       batch_size=s.batch_size, chunk_size=s.chunk_size, progress=s.progress,
                       start=max(s.lengths + [s.positions_length]), seed=s.seed)
        for p in s.protocols
    ] if s.positions_length else []
    effrem = effective_remembrance(
        model, tokens, s.effrem_length, n_sequences=s.effrem_sequences,
        batch_size=s.batch_size, chunk_size=s.chunk_size, progress=s.progress,
    ) if s.effrem_length else None
    parameter = next(model.parameters())
    recorded = {
        "split": s.split, "n_tokens": s.n_tokens, "batch_size": s.batch_size,
        "chunk_size": s.chunk_size, "bytes_per_token": bytes_per_token, "seed": s.seed,
        "confidence": s.confidence, "interval": "paired block bootstrap (longssm.eval.intervals)",
        "corpus": config.get("data", {}).get("corpus"), "device": str(parameter.device),
        "dtype": str(parameter.dtype).replace("torch.", ""),
    }
    results = make_results(
        records, run=run_name or run_dir_of(checkpoint).name, checkpoint=str(checkpoint),
        model_config=config["model"], train_length=train_length,
        policy=config.get("train", {}).get("policy"), settings=recorded,
        classification=classification, positions=positions, effrem=effrem,
    )
    paths = _save(results, out_dir, name, force, tensorboard) if out_dir is not None else None
    return results, paths


def _save(results: dict, out_dir: Path, name: str, force: bool, tensorboard: Path | None):
    """``save_results``; with ``tensorboard`` the curves too, in a folder named like the files
    (its path is recorded in the results as ``tensorboard``)."""
    if tensorboard is None:
        return save_results(results, out_dir, name, force)
    from longssm.eval.tensorboard import curves_dir, write_length_curves

    stem = free_stem(Path(out_dir), name, force).name
    directory = curves_dir(Path(tensorboard), stem, force)
    results["tensorboard"] = str(directory)
    paths = save_results(results, out_dir, name, force)
    write_length_curves(results, directory, describe_verdict)
    return paths


def format_loss(record: dict, digits: int = 4) -> str:
    """``loss ± half-width`` (just the loss for records without an interval)."""
    hw = half_width(record)
    return f"{record['loss']:.{digits}f}" + ("" if hw is None else f" ± {hw:.{digits}f}")


def format_table(records: list[dict], has_bytes: bool = True) -> str:
    """A fixed-width table of the records: loss ± half-width of its 95% interval, and more."""
    unit = "bits/byte" if has_bytes else "bits/tok"
    lines = [
        f"{'protocol':<9} {'L':>7} {'loss ± 95% half-width':>22} {'ppl':>10} {unit:>9} "
        f"{'change vs prev L':>24} {'tokens':>8}"
    ]
    for r in records:
        change = ""
        if r.get("delta_prev") is not None:
            change = f"{r['delta_prev']:+.4f} [{r['delta_prev_low']:+.4f}, {r['delta_prev_high']:+.4f}]"
        lines.append(
            f"{r['protocol']:<9} {r['length']:>7} {format_loss(r):>22} {r['perplexity']:>10.3f} "
            f"{r['bits_per_byte']:>9.4f} {change:>24} {r['n_tokens']:>8}"
        )
    return "\n".join(lines)


def describe_verdict(verdict: dict) -> str:
    """One line: kind, L0, total change and slope with intervals, gap to the best length."""
    if not verdict:
        raise EvalError("no verdict to describe")
    return (
        f"{verdict['kind']} length extension from L0={verdict['l0']}: change to "
        f"L_max={verdict['l_max']} {verdict['change']:+.4f} [{verdict['change_low']:+.4f}, "
        f"{verdict['change_high']:+.4f}] nats, slope {verdict['slope']:+.4f} "
        f"[{verdict['slope_low']:+.4f}, {verdict['slope_high']:+.4f}] per doubling (last half), "
        f"gap to best (L={verdict['l_best']}) {verdict['gap']:.4f} [{verdict['gap_low']:+.4f}, "
        f"{verdict['gap_high']:+.4f}]"
    )
