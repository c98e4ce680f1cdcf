"""The tagging trainer: train on lengths in [min, max], evaluate per length bin (reset protocol).

One readable loop: each step draws one length uniformly from the task's lengths in the training
range, a batch of fresh sequences of that length, and takes an AdamW step on the masked loss
(binary cross-entropy for next-set tasks, cross-entropy for class tasks, MSE for regression).
Evaluation draws ``eval_samples`` fresh sequences per bin, with lengths spread evenly over the
bin (stratified: every length of the bin when there are enough samples), in batches of at most
``eval_batch`` sequences of one length, and scores each from a zero state (the reset protocol).
Prefix-scored tasks (word problems) are scored on words of the bin's top length at every position
of the bin, which gives each length k its own accuracy.

Mixers are named as in the registry (``longssm.models.mixers.MIXERS``) with options:
``NAME[+key=value...]``, e.g. ``mamba``, ``s4d+eigen=direct`` (``eigen`` sets
``ModelConfig.eigen_param``), ``mamba+negative_eigenvalues=true`` (any option the registry entry
declares), so a mixer registered later plugs in without edits here.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from longssm.models import ModelConfig
from longssm.models.mixers import get_mixer
from longssm.tasks.metrics import per_length, position_scores, sequence_scores, summarise
from longssm.tasks.model import TaggingModel
from longssm.tasks.registry import Task, get_task


@dataclass
class TaskRunConfig:
    """One training + evaluation run of a task."""

    task: str
    mixer: str = "mamba"
    """Registry name with options, ``NAME[+key=value...]`` (see the module docstring)."""
    layers: int = 2
    d_model: int = 64
    d_state: int = 16
    train_lengths: tuple[int, int] = (1, 50)
    test_bins: list[tuple[int, int]] = field(default_factory=list)
    """Length bins to evaluate; empty: [min, max] and up to 10x beyond (see ``default_bins``)."""
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    eval_samples: int = 200
    eval_batch: int = 25
    seed: int = 0
    threads: int = 1
    """torch and numba threads (1 is fastest for these small models on a shared machine)."""
    progress: bool = True


def parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_mixer(spec: str) -> tuple[str, dict, dict]:
    """``NAME[+key=value...]`` -> (name, mixer_options, ModelConfig fields). ValueError on an
    unknown mixer or option (checked against the registry entry's declared options)."""
    name, *pairs = spec.split("+")
    entry = get_mixer(name)
    options, fields = {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"mixer option {pair!r} in {spec!r} must be key=value")
        if key == "eigen":
            fields["eigen_param"] = value
        else:
            options[key] = parse_value(value)
    entry.options(options)
    ModelConfig(mixer=name, mixer_options=options, **fields)
    return name, options, fields


def parse_range(text: str, what: str) -> tuple[int, int]:
    """'a:b' (or 'a') -> (a, b) with 1 <= a <= b."""
    lo, _, hi = text.partition(":")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError as exc:
        raise ValueError(f"{what} must look like a:b with integers, got {text!r}") from exc
    if a < 1 or a > b:
        raise ValueError(f"{what} {text!r}: need 1 <= a <= b (lengths in order)")
    return a, b


def default_bins(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi], then (hi, 2hi], (2hi, 4hi], (4hi, 10hi]."""
    return [(lo, hi), (hi + 1, 2 * hi), (2 * hi + 1, 4 * hi), (4 * hi + 1, 10 * hi)]


def check_lengths(task: Task, train: tuple[int, int], bins: list[tuple[int, int]]) -> None:
    """ValueError (one line) when a range is empty for this task or beyond its generator."""
    for (a, b), what in [(train, "train lengths")] + [(r, "test bin") for r in bins]:
        if b > task.max_length:
            raise ValueError(f"{what} {a}:{b} exceeds task {task.name}'s maximum length "
                             f"{task.max_length}")
        if not task.lengths(a, b):
            raise ValueError(f"task {task.name} has no sequences with length in {what} {a}:{b}")


def set_threads(threads: int) -> None:
    """torch's and numba's thread pools (they compete for the cores otherwise)."""
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def build_model(task: Task, cfg: TaskRunConfig) -> TaggingModel:
    name, options, fields = parse_mixer(cfg.mixer)
    mcfg = ModelConfig(mixer=name, d_model=cfg.d_model, n_layers=cfg.layers, d_state=cfg.d_state,
                       d_conv=4, mixer_options=options, **fields)
    return TaggingModel(mcfg, task.n_in, task.n_out, task.continuous)


def _tensors(batch):
    return (torch.from_numpy(batch.inputs), torch.from_numpy(batch.targets),
            torch.from_numpy(batch.mask), torch.from_numpy(batch.score))


def task_loss(kind: str, outputs, targets, mask) -> torch.Tensor:
    """Masked mean loss: BCE (set), cross-entropy (class) or MSE (regression)."""
    if kind == "set":
        per = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").mean(-1)
    elif kind == "class":
        per = F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none")  # (B, L)
    else:
        per = ((outputs - targets) ** 2).mean(-1)
    return (per * mask).sum() / mask.sum().clamp_min(1)


def train_model(task: Task, model: TaggingModel, cfg: TaskRunConfig) -> dict:
    """Train in place; returns the loss history summary."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    lengths = task.lengths(*cfg.train_lengths)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    losses, start = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"{task.name} {cfg.mixer} x{cfg.layers}",
               disable=not cfg.progress, leave=False)
    for _ in bar:
        n = int(rng.choice(lengths))
        inputs, targets, mask, _ = _tensors(task.batch(cfg.batch_size, n, rng))
        outputs, _ = model(inputs)  # (B, L, n_out)
        loss = task_loss(task.kind, outputs, targets, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    tail = losses[-max(1, len(losses) // 10):]
    return {"final_loss": float(np.mean(tail)), "seconds": time.perf_counter() - start,
            "finite": bool(np.isfinite(tail).all())}


def eval_lengths(lengths: list[int], samples: int) -> np.ndarray:
    """``samples`` lengths spread evenly over ``lengths`` (stratified, sorted): every length of a
    bin is scored when samples >= len(lengths), evenly spaced ones otherwise."""
    idx = (np.arange(samples) * len(lengths)) // samples
    return np.asarray(lengths)[idx]


def _bin_batches(task: Task, lo: int, hi: int, cfg: TaskRunConfig, rng: np.random.Generator):
    """The evaluation batches of one bin: (batch, number of sequences). Prefix-scored tasks: words
    of length hi scored at positions lo..hi; others: stratified lengths, grouped by length."""
    if task.prefix_scored:
        groups = [(hi, cfg.eval_samples)]
    else:
        lengths, counts = np.unique(eval_lengths(task.lengths(lo, hi), cfg.eval_samples),
                                    return_counts=True)
        groups = list(zip(lengths.tolist(), counts.tolist()))
    for n, count in groups:
        for start in range(0, count, cfg.eval_batch):
            batch = task.batch(min(cfg.eval_batch, count - start), int(n), rng)
            if task.prefix_scored:
                batch.score[:, : lo - 1] = False
            yield batch


@torch.no_grad()
def evaluate_bins(task: Task, model, cfg: TaskRunConfig) -> list[dict]:
    """Per-bin metric with its 95% interval, every sequence started from the zero state; for
    prefix-scored tasks also the accuracy at every length k of the bin (``per_length``)."""
    model.eval()
    rng = np.random.default_rng(10_000 + cfg.seed)
    rows = []
    for lo, hi in cfg.test_bins:
        scores, by_position = [], np.zeros(hi - lo + 1, dtype=np.int64)
        for batch in _bin_batches(task, lo, hi, cfg, rng):
            inputs, targets, _, score = _tensors(batch)
            outputs, _ = model(inputs)
            outputs = outputs.float()
            scores.append(sequence_scores(task.kind, outputs, targets, score).numpy())
            if task.prefix_scored:
                ok = position_scores(task.kind, outputs, targets)  # (B, hi)
                by_position += ok[:, lo - 1:].sum(0).numpy()
        row = {"lo": lo, "hi": hi, **summarise(task.kind, np.concatenate(scores), cfg.seed,
                                               task.unit)}
        if task.prefix_scored:
            row["per_length"] = per_length(by_position, cfg.eval_samples, lo)
        rows.append(row)
    model.train()
    return rows


def run(cfg: TaskRunConfig) -> dict:
    """Train and evaluate one (task, mixer, depth); the result record (JSON-ready)."""
    task = get_task(cfg.task)
    cfg.test_bins = cfg.test_bins or default_bins(*cfg.train_lengths)
    check_lengths(task, cfg.train_lengths, cfg.test_bins)
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(task, cfg)
    history = train_model(task, model, cfg)
    bins = evaluate_bins(task, model, cfg)
    return {"task": task.name, "family": task.family, "kind": task.kind, "metric": task.metric,
            "label": task.label, "config": asdict(cfg), "parameters": model.num_parameters(),
            "train": history, "eigenvalues": eigenvalue_summary(model), "bins": bins}


@torch.no_grad()
def eigenvalue_summary(model: TaggingModel) -> dict | None:
    """Range of Re λ (continuous eigenvalues) over the layers that expose ``eigenvalues()`` (S4D,
    S5, ...): how close training pushed the slowest mode to the stability boundary 0."""
    reals = [block.mixer.eigenvalues().real.flatten() for block in model.blocks
             if callable(getattr(block.mixer, "eigenvalues", None))]
    if not reals:
        return None
    re = torch.cat(reals).double()
    return {"max_real": float(re.max()), "min_real": float(re.min()),
            "median_real": float(re.median())}
