"""Contiguous streams: the batching that lets a model carry its state from one segment to the next.

``ContiguousStreams`` cuts a token array into B equal streams (classic batchify): stream b is
``tokens[o + b*L : o + (b+1)*L]`` with L the stream length and o the epoch's offset. Step k gives
row b the inputs ``stream_b[k*T : k*T + T]`` and the targets shifted by one,
``stream_b[k*T + 1 : k*T + T + 1]``; consecutive steps overlap by that one token, so no target is
lost and row b of step k+1 continues exactly where row b of step k stopped. The final state of
row b is therefore the right initial state for row b at the next step.

Glossary (code name -> symbol):
    batch_size   B, the number of parallel streams
    seq_len      T, tokens per row per step (the training context length)
    stream_len   L = (N - max_offset) // B, tokens per stream; steps per epoch = (L - 1) // T
    offset       o in [0, T), the same for every stream in an epoch; 0 unless ``offset_seed`` is
                 given, then drawn per epoch so segment boundaries move between epochs

``state_dict()`` is a small JSON-serialisable dict; ``load_state_dict`` resumes exactly.

A data-parallel rank passes ``rows``, the streams it owns: it reads only those rows, every stream
keeps its place in the layout of the global batch B, and the loader position is the same for
every rank (see ``longssm.train.distributed``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from longssm.data.errors import DataError


class Batch(NamedTuple):
    """One training step.

    Attributes:
        inputs: (B, T) long, the tokens fed to the model.
        targets: (B, T) long, ``inputs`` shifted left by one (each row's next token).
        resets: (B,) bool, True on the first step of an epoch (start every row from zero state).
        doc_start_mask: (B, T) bool, True where ``inputs`` holds the first token (separator) of a
            document, for optional per-row resets at document boundaries.
        epoch: epoch of this step (from 0).
        step: step within the epoch (from 0).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    resets: torch.Tensor
    doc_start_mask: torch.Tensor
    epoch: int
    step: int


def _as_array(tokens) -> tuple[np.ndarray, np.ndarray | None]:
    """Accept a TokenCorpus, a numpy array or a 1-D tensor; returns (tokens, doc_starts or None)."""
    if hasattr(tokens, "tokens") and hasattr(tokens, "doc_starts"):
        return tokens.tokens, tokens.doc_starts
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
    if arr.ndim != 1:
        raise DataError(f"tokens must be a 1-D array, got shape {arr.shape}")
    return arr, None


class ContiguousStreams:
    """B contiguous streams over a token array, iterated T tokens at a time, across epochs.

    Args:
        tokens: (N,) token array (numpy, memmap, tensor) or a ``TokenCorpus``.
        batch_size: B > 0.
        seq_len: T > 0.
        doc_starts: (D,) positions where documents begin (taken from a ``TokenCorpus`` if
            omitted); only used for ``doc_start_mask``.
        offset_seed: if given, each epoch shifts every stream's start by a seeded random
            o < T, so segments differ between epochs; costs up to T-1 tokens per epoch.
        device: where the batch tensors are put.
        rows: the streams (indices in [0, B)) this loader yields, in this order; all B by
            default. Batches then have ``len(rows)`` rows; the layout and the position do not
            change.
    """

    def __init__(
        self,
        tokens,
        batch_size: int,
        seq_len: int,
        doc_starts=None,
        offset_seed: int | None = None,
        device: torch.device | str | None = None,
        rows: Sequence[int] | None = None,
    ):
        self.tokens, corpus_starts = _as_array(tokens)
        if doc_starts is None:
            doc_starts = corpus_starts
        if batch_size <= 0 or seq_len <= 0:
            raise DataError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.offset_seed = offset_seed
        self.device = device
        self.rows = np.arange(batch_size) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1 or not len(self.rows) or not (
            (self.rows >= 0) & (self.rows < batch_size)
        ).all():
            raise DataError(f"rows must be a non-empty list of streams in [0, {batch_size})")
        n = len(self.tokens)
        max_offset = seq_len - 1 if offset_seed is not None else 0
        self.stream_len = (n - max_offset) // batch_size
        if self.stream_len < seq_len + 1:
            raise DataError(
                f"corpus of {n} tokens is too short for {batch_size} streams of at least "
                f"seq_len+1 = {seq_len + 1} tokens (needs "
                f"{batch_size * (seq_len + 1) + max_offset}); use a smaller batch_size or "
                "seq_len, or a larger corpus"
            )
        self.num_steps_per_epoch = (self.stream_len - 1) // seq_len
        # Sorted start positions, searched per batch (a dense (N,) mask would cost N bytes).
        starts = np.asarray([] if doc_starts is None else doc_starts, dtype=np.int64)
        self._doc_starts = np.unique(starts)
        self.epoch = 0
        self.step_in_epoch = 0

    def epoch_offset(self, epoch: int) -> int:
        """The shift o in [0, T) of every stream in ``epoch`` (0 without ``offset_seed``)."""
        if self.offset_seed is None:
            return 0
        return int(np.random.default_rng([self.offset_seed, epoch]).integers(0, self.seq_len))

    def batch_at(self, epoch: int, step: int) -> Batch:
        """The batch of step ``step`` of ``epoch``, without moving the iterator."""
        if not 0 <= step < self.num_steps_per_epoch:
            raise DataError(f"step {step} outside [0, {self.num_steps_per_epoch})")
        b, t = len(self.rows), self.seq_len
        # (B,) first token of each row's window
        starts = self.epoch_offset(epoch) + self.rows * self.stream_len + step * t
        idx = starts[:, None] + np.arange(t + 1)[None, :]  # (B, T+1)
        window = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))  # (B, T+1)
        mask = torch.from_numpy(self._starts_at(idx[:, :-1]))  # (B, T)
        resets = torch.full((b,), step == 0, dtype=torch.bool)  # (B,)
        dev = self.device
        return Batch(
            window[:, :-1].to(dev),
            window[:, 1:].to(dev),
            resets.to(dev),
            mask.to(dev),
            epoch,
            step,
        )

    def _starts_at(self, positions: np.ndarray) -> np.ndarray:
        """Boolean array, True where ``positions`` is a document start."""
        s = self._doc_starts
        if len(s) == 0:
            return np.zeros(positions.shape, dtype=bool)
        i = np.minimum(np.searchsorted(s, positions), len(s) - 1)
        return s[i] == positions

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = self.batch_at(self.epoch, self.step_in_epoch)
        self.step_in_epoch += 1
        if self.step_in_epoch == self.num_steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        return batch

    def state_dict(self) -> dict:
        """The loader position and the settings it depends on (JSON-serialisable)."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_tokens": len(self.tokens),
            "offset_seed": self.offset_seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved position; the settings must match this loader's."""
        mine = self.state_dict()
        for key in ("batch_size", "seq_len", "num_tokens", "offset_seed"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"loader state has {key}={state.get(key)} but this loader has {mine[key]}; "
                    "resume with the same corpus, batch_size, seq_len and offset_seed"
                )
        step = int(state["step_in_epoch"])
        if not 0 <= step < self.num_steps_per_epoch:
            raise DataError(f"loader state step {step} outside [0, {self.num_steps_per_epoch})")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = step

    def __repr__(self) -> str:
        return (
            f"ContiguousStreams(B={self.batch_size}, T={self.seq_len}, L={self.stream_len}, "
            f"steps/epoch={self.num_steps_per_epoch}, epoch={self.epoch}, "
            f"step={self.step_in_epoch})"
        )
