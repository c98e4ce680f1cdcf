"""The task registry: every synthetic task as a ``Task`` with one batch format.

A ``Batch`` of B sequences of one length L:

    inputs   (B, L) int64 token ids, or (B, L, d_in) float32 for continuous inputs
    targets  set tasks:        (B, L, n_out) float32 multi-hot next-character sets
             class tasks:      (B, L) int64 class index (group element, value)
             regression tasks: (B, L, 1) float32
    mask     (B, L) bool: the positions trained on
    score    (B, L) bool: the positions a sequence is scored on

Metrics (one number per length bin, see ``metrics``): set and class tasks score positions and
report a bin in the task's ``unit``: ``sequence`` (right when every scored position is right;
Wilson interval) or ``position`` (pooled accuracy of the scored positions; bootstrap over
sequences); both units are kept. Regression tasks score the normalised MSE Σ(ŷ − y)² / Σ y² over
the bin (percentile-bootstrap interval over sequences).

A ``prefix_scored`` task (the group word problems) answers at position t the question of length t
(the running product of the first t elements), so a bin [lo, hi] is scored on words of length hi
at positions lo..hi: every length k in the bin gets the same number of trials, and its accuracy
is the per-length accuracy of Merrill et al.

The *length* n of a task: the string length of a formal language (the model reads BOS + n
characters: n + 1 positions), the word length k of a group word problem, and the sequence length
of every other task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from longssm.tasks import functionals, recall, signatures
from longssm.tasks.groups import GROUPS, get_group
from longssm.tasks.languages import Language, languages

MAX_LENGTH = 10_000
"""The longest sequence any generator produces (memory and time stay bounded)."""


@dataclass
class Batch:
    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    score: np.ndarray


@dataclass(frozen=True)
class Task:
    """One task. ``make(batch, n, rng) -> Batch``; ``has_length(n)`` says whether length n exists."""

    name: str
    family: str
    kind: str  # "set" | "class" | "regression"
    n_in: int  # vocabulary size, or input dimension when ``continuous``
    n_out: int
    continuous: bool
    make: Callable[[int, int, np.random.Generator], Batch]
    has_length: Callable[[int], bool]
    max_length: int
    label: str
    unit: str = "sequence"
    """Headline accuracy unit: "sequence" (all scored positions right) or "position"."""
    prefix_scored: bool = False
    """Position t carries the answer for length t: bins are scored on prefixes (see above)."""

    @property
    def metric(self) -> str:
        return "nmse" if self.kind == "regression" else "accuracy"

    def lengths(self, lo: int, hi: int) -> list[int]:
        """The lengths in [lo, hi] this task can generate."""
        return [n for n in range(max(lo, 1), min(hi, self.max_length) + 1) if self.has_length(n)]

    def batch(self, batch: int, n: int, rng: np.random.Generator) -> Batch:
        if n > self.max_length:
            raise ValueError(f"task {self.name}: length {n} exceeds its maximum {self.max_length}")
        if not self.has_length(n):
            raise ValueError(f"task {self.name} has no sequences of length {n}")
        return self.make(batch, n, rng)


def _language_task(lang: Language) -> Task:
    def make(batch: int, n: int, rng: np.random.Generator) -> Batch:
        strings = [lang.sample(n, rng) for _ in range(batch)]
        ids = np.array([[0] + [1 + lang.alphabet.index(c) for c in s] for s in strings])
        targets = np.stack([lang.next_sets(s) for s in strings])  # (B, n+1, A+1)
        mask = np.ones(ids.shape, dtype=bool)
        score = np.stack([lang.scored(s) for s in strings])  # (B, n+1)
        return Batch(ids.astype(np.int64), targets, mask, score)

    return Task(lang.name, "language", "set", len(lang.alphabet) + 1, len(lang.alphabet) + 1,
                False, make, lang.has_length, MAX_LENGTH - 1,
                f"next-character set over '{lang.alphabet}' + EOS, multi-hot, at each of n+1 "
                "positions (BOS first)" + ("; scored at the reads" if lang.name == "flipflop"
                                           else ""),
                unit="position" if lang.name == "flipflop" else "sequence")


def _group_task(name: str) -> Task:
    group = get_group(name)

    def make(batch: int, n: int, rng: np.random.Generator) -> Batch:
        words = rng.integers(group.order, size=(batch, n))
        targets = group.running_products(words)
        mask = np.ones(words.shape, dtype=bool)
        return Batch(words, targets, mask, mask.copy())

    return Task(name, "group", "class", group.order, group.order, False, make, lambda n: n >= 1,
                MAX_LENGTH, f"index of the running product g_1·…·g_t in {name} "
                f"(|G| = {group.order}) at every position t; trained on all, scored per length",
                unit="position", prefix_scored=True)


def _regression_task(name: str, family: str, d_in: int, sample, label: str) -> Task:
    def make(batch: int, n: int, rng: np.random.Generator) -> Batch:
        x, y = sample(batch, n, rng)
        mask = np.ones(x.shape[:2], dtype=bool)
        return Batch(x, y, mask, mask)

    return Task(name, family, "regression", d_in, 1, True, make, lambda n: n >= 1, MAX_LENGTH,
                label)


def _recall_task(name: str) -> Task:
    if name == "mqar":
        fn, vocab, n_out, ok, top = (recall.mqar, recall.KEYS + recall.VALUES, recall.VALUES,
                                     lambda n: n >= 3 and n % 3 == 0, 3 * recall.KEYS)
        label = ("value bound to the queried key at each query position (last third); scored "
                 "per query (Zoology's accuracy)")
    else:
        fn, vocab, n_out, ok, top = (recall.passkey, recall.PASS_VOCAB, recall.PASS_VALUES,
                                     lambda n: n >= 3, MAX_LENGTH)
        label = "the passkey value at the final QUERY position"

    def make(batch: int, n: int, rng: np.random.Generator) -> Batch:
        inputs, targets, mask = fn(batch, n, rng)
        return Batch(inputs, targets, mask, mask)

    return Task(name, "recall", "class", vocab, n_out, False, make, ok, top, label,
                unit="position" if name == "mqar" else "sequence")


def _build() -> dict[str, Task]:
    tasks = {name: _language_task(lang) for name, lang in languages().items()}
    tasks.update({name: _group_task(name) for name in GROUPS})
    for kind, d in (("area", 2), ("sig3", 3)):
        tasks[kind] = _regression_task(
            kind, "signature", d, lambda b, n, r, k=kind: signatures.sample(k, b, n, r),
            f"signature term {'S^12 (area)' if d == 2 else 'S^123'} of the path so far")
    for mem in functionals.MEMORIES:
        tasks[f"mem-{mem}"] = _regression_task(
            f"mem-{mem}", "functional", 1, lambda b, n, r, m=mem: functionals.sample(m, b, n, r),
            f"y_t = sum_s rho(t-s) x_s with the {mem} memory")
    tasks.update({name: _recall_task(name) for name in ("mqar", "passkey")})
    return tasks


TASKS: dict[str, Task] = _build()
"""name -> Task."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
