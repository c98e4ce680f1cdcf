"""What a run writes while it trains: ``metrics.csv`` and ``diagnostics.jsonl`` (rank 0 only).

``metrics.csv`` has one row per logged step (``METRIC_FIELDS``); on resume it is cut back to the
checkpoint's step and rewritten whole, then rows are appended. ``diagnostics.jsonl`` has one JSON
record per diagnostic step: gradient norm, its ratio to the weight norm, the largest carried-state
norm of every layer and the SSM eigenvalue bounds (``transition_stats``).

Glossary: ``tokens_per_s`` counts training tokens (all ranks) between two logged rows;
``val_loss_reset`` / ``val_loss_stream`` are the validation losses at the training length from zero
states / with the state carried (empty when the step did not validate).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from longssm.models import SSMLanguageModel

METRIC_FIELDS = [
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "val_loss_reset",
    "val_loss_stream",
    "elapsed_s",
]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as the whole of ``path`` (atomically: a temporary file renamed into place)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``path`` (values as strings), or [] when it does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """Appends rows to ``metrics.csv`` and ``history``, timing the tokens/s between rows.

    Args:
        path: the run's ``metrics.csv`` (already holding the rows of ``history``).
        history: rows so far (read back on resume); ``record`` appends to it.
        tokens_per_step: training tokens of one optimiser step, all ranks together.
        step: the step training starts from.
    """

    def __init__(self, path: Path, history: list[dict], tokens_per_step: int, step: int,
                 tensorboard: Path | None = None):  # fmt: skip
        self.tensorboard = None
        if tensorboard is not None:
            from longssm.train.tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(tensorboard, step)
        self.path = path
        self.history = history
        self.tokens_per_step = tokens_per_step
        self.start_time = self.last_time = time.perf_counter()
        self.last_step = step

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def record(self, step: int, loss: float, lr: float, grad_norm: float, val_reset, val_stream):
        """Append the row of ``step`` (validation losses may be None) and return it."""
        now = time.perf_counter()
        tps = (step - self.last_step) * self.tokens_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        row = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "loss": round(loss, 6),
            "lr": lr,
            "grad_norm": round(grad_norm, 6),
            "tokens_per_s": round(tps, 1),
            "val_loss_reset": "" if val_reset is None else round(val_reset, 6),
            "val_loss_stream": "" if val_stream is None else round(val_stream, 6),
            "elapsed_s": round(now - self.start_time, 2),
        }
        self.history.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRIC_FIELDS).writerow(row)
        if self.tensorboard is not None:
            self.tensorboard.metrics(row)
        return row

    def diagnostics(self, path: Path, record: dict) -> None:
        """Append a ``diagnostics`` record to ``path`` (and to TensorBoard when enabled)."""
        append_diagnostics(path, record)
        if self.tensorboard is not None:
            self.tensorboard.diagnostics(record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def transition_stats(model: SSMLanguageModel) -> list[dict]:
    """Per layer: max real part and max modulus of the continuous-time SSM eigenvalues."""
    stats = []
    for block in model.blocks:
        mixer = block.mixer
        eig = None
        if hasattr(mixer, "eigenvalues"):
            eig = mixer.eigenvalues()
        elif hasattr(mixer, "A_log"):
            eig = -torch.exp(mixer.A_log.detach())
        if eig is None:
            stats.append({})
            continue
        eig = eig.detach()
        real = eig.real if eig.is_complex() else eig
        stats.append({"max_re_eig": real.max().item(), "max_abs_eig": eig.abs().max().item()})
    return stats


def diagnostics(step: int, grad_norm: float, model: SSMLanguageModel, state_max_norm: list) -> dict:
    """The ``diagnostics.jsonl`` record of ``step``; ``state_max_norm``: per layer, over all rows."""
    weights = torch.sqrt(sum(p.detach().float().pow(2).sum() for p in model.parameters()))
    return {
        "step": step,
        "grad_norm": grad_norm,
        "grad_weight_ratio": grad_norm / max(weights.item(), 1e-12),
        "state_max_norm": state_max_norm,
        "transition": transition_stats(model),
    }


def truncate_diagnostics(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step`` (a resume): no step is ever recorded twice.

    A torn last line (a kill while appending) is dropped too. Rewritten atomically.
    """
    if not path.is_file():
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
                keep = isinstance(record, dict) and int(record["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def append_diagnostics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def unigram_entropy(tokens, vocab_size: int) -> float:
    """Entropy (nats) of the empirical unigram distribution: the loss of a context-free model."""
    counts = torch.bincount(
        torch.from_numpy(np.asarray(tokens[: 1 << 24], dtype=np.int64)), minlength=vocab_size
    )
    probs = counts.double() / counts.sum()
    probs = probs[probs > 0]
    return float(-(probs * probs.log()).sum())
