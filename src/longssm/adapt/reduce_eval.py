"""``longssm eval RUN --reduce METHOD:KEEP[:LAYERS] [--reduce-beyond T]``: loss with token reduction.

    report = reduce_eval("runs/base", ReduceSpec("hybrid", 0.5, (0,), beyond=64), [256, 1024],
                         "runs/base/eval")

For every length L, the windows ``longssm eval`` scores under the reset protocol (``reset_starts``)
are scored from the model's start twice, each in chunks of ``chunk_size`` tokens with the state
carried (constant memory in L): plain, and with reduction (``reduced_nll``; the reduction acts
inside each chunk, on its positions >= ``beyond``). The reduced model has logits
only at the kept positions, so the comparison is paired at those positions: ``increase`` =
reduced loss - plain loss at the kept positions, with a 95% window-bootstrap interval. At keep
ratio 1 the two are identical (tested). Writes ``<out>/<name>.json``; an existing file is kept
unless ``force``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from longssm.adapt.errors import AdaptError
from longssm.adapt.reduce import ReduceSpec, reduced_nll
from longssm.adapt.score import paired_gain, summarise
from longssm.adapt.tune import target_corpus
from longssm.interop.pretrained import load_source


def reset_starts(n_available: int, length: int, n_tokens: int, batch_size: int,
                 start: int) -> np.ndarray:
    """Starts of the windows ``longssm eval`` scores at ``length`` under the reset protocol.

    The rule of ``longssm.eval.windows.plan_windows`` (eval is a sibling room, so it is restated
    here and pinned to it by a test): n = min(max(1, n_tokens // L), windows that fit after
    ``start``), rows = min(batch_size, n), n // rows windows per row; the windows are consecutive,
    window i starting at start + i·L.
    """
    cap = (n_available - 1 - start) // length
    n_windows = min(max(1, n_tokens // length), cap)
    if n_windows < 1:
        raise AdaptError(f"a stream of {n_available} tokens has no room for a window of "
                         f"{length} tokens after token {start}")
    rows = min(batch_size, n_windows)
    return start + np.arange(rows * (n_windows // rows), dtype=np.int64) * length


def plain_nll(model, window: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-target loss (B, T) of windows (B, T + 1), in chunks with the state carried."""
    state, out = None, []
    for a in range(0, window.shape[1] - 1, chunk_size):
        piece = window[:, a : a + chunk_size + 1]  # (B, c + 1)
        logits, state = model(piece[:, :-1], state)  # (B, c, V)
        out.append(F.cross_entropy(logits.double().transpose(1, 2), piece[:, 1:],
                                   reduction="none"))
    return torch.cat(out, 1)


@torch.inference_mode()
def length_record(model, tokens, starts: np.ndarray, length: int, spec: ReduceSpec,
                  batch_size: int = 8, chunk_size: int = 1024) -> dict:
    """Plain and reduced loss of the windows at ``starts`` (paired at the kept positions)."""
    device = next(model.parameters()).device
    plain, reduced, kept = [], [], []
    for i in range(0, len(starts), batch_size):
        idx = starts[i : i + batch_size, None] + np.arange(length + 1)  # (b, L+1)
        window = torch.as_tensor(np.asarray(tokens[idx], dtype=np.int64), device=device)
        nll = plain_nll(model, window, chunk_size)  # (b, L)
        red, pos = reduced_nll(model, window, spec, chunk_size)  # (b, K), (b, K)
        plain.append(nll.cpu().numpy())
        reduced.append(red.cpu().numpy())
        kept.append(torch.gather(nll, 1, pos).cpu().numpy())
    plain, reduced, kept = (np.concatenate(a) for a in (plain, reduced, kept))
    gain = paired_gain(kept, reduced)
    return {"length": length, "kept_positions": int(reduced.shape[1]),
            "start": int(starts[0]), "chunk_size": chunk_size,
            "plain": summarise(plain), "plain_at_kept": summarise(kept),
            "reduced": summarise(reduced),
            "increase": gain["gain"] * -1, "increase_low": -gain["gain_high"],
            "increase_high": -gain["gain_low"]}


def reduce_eval(run, spec: ReduceSpec, lengths: list[int], out, *, corpus: str | None = None,
                split: str = "test", n_tokens: int = 1 << 14, name: str | None = None,
                force: bool = False, device: str | torch.device = "cpu",
                progress: bool = True, batch_size: int = 8,
                chunk_size: int = 1024) -> tuple[dict, Path]:
    """Score ``run`` (any model source) with and without ``spec`` at every length; write JSON.

    The windows are those of ``longssm eval`` (reset protocol, ``n_tokens`` targets per length,
    ``batch_size`` rows, the first at token max(lengths)); each runs in chunks of
    ``chunk_size`` tokens with the state carried. Returns (report, path).
    """
    if chunk_size < 1 or batch_size < 1:
        raise AdaptError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")
    path = Path(out) / f"{name or f'reduce-{spec.method}-{spec.keep:g}'}.json"
    if path.exists() and not force:
        raise AdaptError(f"{path} exists; pass --force to replace it (nothing was overwritten)")
    model, ckpt, meta = load_source(run, device=device)
    model.eval()
    corpus = corpus or meta["config"].get("data", {}).get("corpus")
    if not corpus:
        raise AdaptError(f"{run} names no corpus of its own: give --corpus SPEC")
    tokens = target_corpus(meta, corpus, split, model.cfg.vocab_size).tokens
    records = []
    for length in tqdm(lengths, desc="reduce", disable=not progress):
        starts = reset_starts(len(tokens), length, n_tokens, batch_size, max(lengths))
        records.append(length_record(model, tokens, starts, length, spec, batch_size, chunk_size))
    report = {"run": str(ckpt), "corpus": corpus, "split": split,
              "reduce": {"method": spec.method, "keep": spec.keep, "layers": list(spec.layers),
                         "beyond": spec.beyond, "seed": spec.seed},
              "records": records}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return report, path
