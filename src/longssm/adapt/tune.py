"""``longssm adapt``: train only an adaptation method's tensors (state tuning, prefix, LoRA; or
every parameter with ``full``) of a trained run on a new corpus.

    summary = adapt_run("runs/base", "state-offset-h", "../shared/corpora/austen", steps=200,
                        out="runs/base-austen-offh")
    model, meta, _ = load_adapted("runs/base-austen-offh")

The loop is plain: contiguous rows of T tokens from the target corpus's train split, every
segment from ``state=None`` (zeros, or the learned h_0 of initial-state tuning), AdamW on the
adapter tensors only, the rest frozen. The held-out loss on the target's validation split is
scored before and after (``longssm.adapt.score``, 95% window-bootstrap intervals).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from longssm.adapt.adapter import attach, check_free, check_method, file_sha256, save_adapter
from longssm.adapt.errors import AdaptError
from longssm.adapt.score import paired_gain, summarise, window_nll
from longssm.checkpoint import load_model
from longssm.data import ContiguousStreams, load_corpus, tokenizer_from_dict


@dataclass
class AdaptSettings:
    """How an adapter is trained.

    Attributes:
        steps: optimiser steps. seq_len: T (default the base run's). batch_size: rows per step.
        lr: AdamW learning rate (constant after a 10% linear warm-up). weight_decay: AdamW's.
        eval_windows: held-out windows scored before and after. eval_length: their length
            (default 4 T). seed: torch seed. progress: show a tqdm bar.
    """

    steps: int = 200
    seq_len: int | None = None
    batch_size: int = 16
    lr: float = 1e-2
    weight_decay: float = 0.0
    eval_windows: int = 32
    eval_length: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_windows"):
            if getattr(self, name) < 1:
                raise AdaptError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seq_len", "eval_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AdaptError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise AdaptError(f"lr must be > 0, got {self.lr}")


def target_corpus(meta: dict, spec: str, split: str, vocab_size: int):
    """The ``split`` of corpus ``spec`` read with the base run's tokenizer; its ids must be < V."""
    tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
    cache_dir = meta["config"].get("data", {}).get("cache_dir") or None
    corpus = load_corpus(spec, tokenizer, split=split, cache_dir=cache_dir, progress=False)
    if corpus.vocab_size > vocab_size:
        raise AdaptError(f"corpus {spec} has {corpus.vocab_size} symbols, the model reads "
                         f"{vocab_size}")
    return corpus


def train_adapter(model, params, tokens, s: AdaptSettings, seq_len: int) -> list[float]:
    """AdamW on ``params`` over contiguous rows of ``tokens``; returns the loss of each step."""
    loader = ContiguousStreams(tokens, s.batch_size, seq_len)
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    warmup = max(1, s.steps // 10)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for step in tqdm(range(s.steps), desc="adapt", disable=not s.progress, mininterval=1.0):
        for group in optimizer.param_groups:
            group["lr"] = s.lr * min(1.0, (step + 1) / warmup)
        batch = next(loader)
        logits, _ = model(batch.inputs.to(device))  # (B, T, V)
        loss = F.cross_entropy(logits.float().transpose(1, 2), batch.targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def adapt_run(run, method: str, corpus: str, out, settings: AdaptSettings | None = None,
              device: str | torch.device = "cpu") -> dict:
    """Train the adapter ``method`` of the trained ``run`` on ``corpus``; save it to ``out``.

    Returns the summary written into ``out/adapter.json`` (trainable count, losses with
    intervals, the paired held-out gain).
    """
    s = settings or AdaptSettings()
    check_method(method)
    check_free(out)
    torch.manual_seed(s.seed)
    model, ckpt, meta = load_model(run, device=device)
    seq_len = s.seq_len or int(meta["config"].get("data", {}).get("seq_len", 64))
    eval_length = s.eval_length or 4 * seq_len
    train_tokens = target_corpus(meta, corpus, "train", model.cfg.vocab_size).tokens
    held_out = target_corpus(meta, corpus, "validation", model.cfg.vocab_size).tokens
    before = window_nll(model, held_out, eval_length, s.eval_windows)
    base_parameters = sum(p.numel() for p in model.parameters())
    params = attach(model, method)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = time.perf_counter()
    losses = train_adapter(model, params, train_tokens, s, seq_len)
    seconds = time.perf_counter() - start
    after = window_nll(model, held_out, eval_length, s.eval_windows)
    summary = {
        "base": str(Path(ckpt).resolve()), "base_sha256": file_sha256(Path(ckpt) / "model.safetensors"),
        "method": method, "corpus": corpus, "trainable_parameters": n_trainable,
        "base_parameters": base_parameters,
        "settings": {**asdict(s), "seq_len": seq_len, "eval_length": eval_length},
        "train_loss_first": losses[0], "train_loss_last": losses[-1], "seconds": seconds,
        "heldout_before": summarise(before), "heldout_after": summarise(after),
        "heldout_gain": paired_gain(before, after),
    }
    save_adapter(out, model, summary)
    return summary
