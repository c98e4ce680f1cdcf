"""``longssm eval RUN --reduce METHOD:KEEP[:LAYERS] [--reduce-beyond T]``: loss with token reduction.

    report = reduce_eval("runs/base", ReduceSpec("hybrid", 0.5, (0,), beyond=64), [256, 1024],
                         "runs/base/eval")

For every length L, ``n_windows`` evenly spaced windows of L + 1 tokens of the split are scored
from zero state (the reset protocol) twice: plain (``model(window)``) and with reduction
(``reduced_nll``, one pass per window: no chunks, no carried state). The reduced model has logits
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
from longssm.adapt.score import paired_gain, summarise, window_starts
from longssm.adapt.tune import target_corpus
from longssm.interop.pretrained import load_source


@torch.inference_mode()
def length_record(model, tokens, length: int, spec: ReduceSpec, n_windows: int,
                  batch_size: int = 8) -> dict:
    """Plain and reduced loss of ``n_windows`` windows of ``length`` (paired at kept positions)."""
    starts = window_starts(len(tokens), length, n_windows)
    device = next(model.parameters()).device
    plain, reduced, kept = [], [], []
    for i in range(0, len(starts), batch_size):
        idx = starts[i : i + batch_size, None] + np.arange(length + 1)  # (b, L+1)
        window = torch.as_tensor(np.asarray(tokens[idx], dtype=np.int64), device=device)
        logits, _ = model(window[:, :-1])  # (b, L, V)
        nll = F.cross_entropy(logits.double().transpose(1, 2), window[:, 1:], reduction="none")
        red, pos = reduced_nll(model, window, spec)  # (b, K), (b, K)
        plain.append(nll.cpu().numpy())
        reduced.append(red.cpu().numpy())
        kept.append(torch.gather(nll, 1, pos).cpu().numpy())
    plain, reduced, kept = (np.concatenate(a) for a in (plain, reduced, kept))
    gain = paired_gain(kept, reduced)
    return {"length": length, "kept_positions": int(reduced.shape[1]),
            "plain": summarise(plain), "plain_at_kept": summarise(kept),
            "reduced": summarise(reduced),
            "increase": gain["gain"] * -1, "increase_low": -gain["gain_high"],
            "increase_high": -gain["gain_low"]}


def reduce_eval(run, spec: ReduceSpec, lengths: list[int], out, *, corpus: str | None = None,
                split: str = "test", n_tokens: int = 1 << 14, name: str | None = None,
                force: bool = False, device: str | torch.device = "cpu",
                progress: bool = True) -> tuple[dict, Path]:
    """Score ``run`` (any model source) with and without ``spec`` at every length; write JSON.

    ``n_tokens`` targets per length (at least 1, at most 64 windows). Returns (report, path).
    """
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
        n_windows = max(1, min(64, n_tokens // length))
        records.append(length_record(model, tokens, length, spec, n_windows))
    report = {"run": str(ckpt), "corpus": corpus, "split": split,
              "reduce": {"method": spec.method, "keep": spec.keep, "layers": list(spec.layers),
                         "beyond": spec.beyond, "seed": spec.seed},
              "records": records}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return report, path
