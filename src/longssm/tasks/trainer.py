"""The tagging trainer: train on lengths in [min, max], evaluate per length bin (reset / carried).

The loop (``tasks.training``): each episode draws one length uniformly from the task's lengths in
the training range and a batch of fresh sequences of that length, and takes AdamW steps on the
masked loss (binary cross-entropy for next-set tasks, cross-entropy for class tasks, MSE for
regression), one per segment, the state policy of ``longssm.policies`` choosing each segment's
initial state; checkpoints are the training floor's (``longssm.checkpoint``).
Evaluation draws ``eval_samples`` fresh sequences per bin, with lengths spread evenly over the
bin (stratified: every length of the bin when there are enough samples), in batches of at most
``eval_batch`` sequences of one length, and scores each from a zero state in one pass (the reset
protocol) and/or in segments of the training length with the state carried (the carried protocol).
Prefix-scored tasks (word problems) are scored on words of the bin's top length at every position
of the bin, which gives each length k its own accuracy.

Mixers are named as in the registry (``longssm.models.mixers.MIXERS``) with options:
``NAME[+key=value...]``, e.g. ``mamba``, ``s4d+eigen=direct`` (``eigen`` sets
``ModelConfig.eigen_param``), ``mamba+negative_eigenvalues=true`` (any option the registry entry
declares), so a mixer registered later plugs in without edits here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from longssm.config import parse_policy
from longssm.models import ModelConfig
from longssm.models.mixers import get_mixer
from longssm.runtime import keep_freed_memory, set_cpu_threads
from longssm.tasks.metrics import per_length, position_scores, sequence_scores, summarise
from longssm.tasks.model import TaggingModel
from longssm.tasks.registry import Task, get_task
from longssm.tasks.training import train_model


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
    policy: str = "zero"
    """State-initialisation policy of every training segment (``longssm.config.POLICY_GRAMMAR``:
    zero, previous, passing, noise, fitted-noise, learned, p-reset:P; see ``tasks.training``)."""
    noise_std: float = 1.0
    """Standard deviation of the ``noise`` policy."""
    segments: int = 1
    """Each training sequence is processed in this many consecutive pieces, one optimiser step
    each, the policy choosing each piece's initial state (at most the shortest training length)."""
    reset_between_sequences: bool = True
    """Rows reset (policy ``resets``) at the first piece of each new sequence; False: the carried
    state runs on from the previous, unrelated sequence."""
    protocols: tuple[str, ...] = ("reset",)
    """Evaluation protocols: ``reset`` (one pass from the zero state) and/or ``carried`` (the
    same sequences in segments of ``eval_segment`` with the state carried between them)."""
    eval_segment: int = 0
    """Segment length of the carried protocol; 0: the longest training length."""
    run_dir: str | None = None
    """Where checkpoints go (``run_dir/checkpoints/ckpt-NNNNNNNN``); None: no checkpoints."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end; needs ``run_dir``)."""
    resume: bool = False
    """Continue from the latest checkpoint under ``run_dir``."""


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


def build_model(task: Task, cfg: TaskRunConfig) -> TaggingModel:
    name, options, fields = parse_mixer(cfg.mixer)
    mcfg = ModelConfig(mixer=name, d_model=cfg.d_model, n_layers=cfg.layers, d_state=cfg.d_state,
                       d_conv=4, mixer_options=options, **fields)
    return TaggingModel(mcfg, task.n_in, task.n_out, task.continuous)


def _tensors(batch):
    return (torch.from_numpy(batch.inputs), torch.from_numpy(batch.targets),
            torch.from_numpy(batch.mask), torch.from_numpy(batch.score))


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


PROTOCOLS = ("reset", "carried")


def forward_segments(model, inputs: torch.Tensor, segment: int):
    """The carried protocol: ``inputs`` (B, L[, d]) in consecutive pieces of ``segment``
    positions, each piece starting from the previous piece's final state (the first from zeros).
    In exact arithmetic this is one pass from the zero state (tests/tasks/test_training.py)."""
    state, outputs = None, []
    for start in range(0, inputs.shape[1], segment):
        out, state = model(inputs[:, start:start + segment], state)  # (B, piece, n_out)
        outputs.append(out)
    return torch.cat(outputs, 1), state


@torch.no_grad()
def evaluate_bins(task: Task, model, cfg: TaskRunConfig, protocol: str = "reset") -> list[dict]:
    """Per-bin metric with its 95% interval; for prefix-scored tasks also the accuracy at every
    length k of the bin (``per_length``). ``reset``: every sequence in one pass from the zero
    state; ``carried``: in segments of ``eval_segment`` with the state carried. Both protocols
    score the same sequences (one generator seed), so their difference is paired."""
    model.eval()
    rng = np.random.default_rng(10_000 + cfg.seed)
    segment = cfg.eval_segment or cfg.train_lengths[1]
    rows = []
    for lo, hi in cfg.test_bins:
        scores, by_position = [], np.zeros(hi - lo + 1, dtype=np.int64)
        for batch in _bin_batches(task, lo, hi, cfg, rng):
            inputs, targets, _, score = _tensors(batch)
            if protocol == "carried":
                outputs, _ = forward_segments(model, inputs, segment)
            else:
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


def check_config(task: Task, cfg: TaskRunConfig) -> None:
    """ValueError (one line) for settings that do not fit together or this task."""
    check_lengths(task, cfg.train_lengths, cfg.test_bins)
    shortest = task.lengths(*cfg.train_lengths)[0]
    if not 1 <= cfg.segments <= shortest:
        raise ValueError(f"segments must lie in [1, {shortest}] (the shortest training sequence "
                         f"of {task.name}), got {cfg.segments}")
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad or not cfg.protocols:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {bad or 'none'}")
    if cfg.eval_segment < 0:
        raise ValueError(f"eval segment must be >= 0 (0: the longest training length), got "
                         f"{cfg.eval_segment}")
    name, value = parse_policy(cfg.policy)  # ConfigError (a ValueError) for an unknown name
    if name == "bptt" and value > 1:
        raise ValueError(f"policy {cfg.policy!r}: the tagging trainer takes one optimiser step per "
                         "segment, so the gradient cannot flow through several (use previous)")
    if (cfg.checkpoint_every or cfg.resume) and not cfg.run_dir:
        raise ValueError("checkpoints and --resume need a --run-dir")


def run(cfg: TaskRunConfig) -> dict:
    """Train and evaluate one (task, mixer, depth); the result record (JSON-ready).

    ``bins`` holds the first protocol's bins; ``protocols`` every protocol's."""
    task = get_task(cfg.task)
    cfg.test_bins = cfg.test_bins or default_bins(*cfg.train_lengths)
    check_config(task, cfg)
    keep_freed_memory()  # a training process: see longssm.runtime
    set_cpu_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(task, cfg)
    history = train_model(task, model, cfg)
    protocols = {p: evaluate_bins(task, model, cfg, p) for p in cfg.protocols}
    return {"task": task.name, "family": task.family, "kind": task.kind, "metric": task.metric,
            "label": task.label, "config": asdict(cfg), "parameters": model.num_parameters(),
            "train": history, "eigenvalues": eigenvalue_summary(model),
            "bins": protocols[cfg.protocols[0]], "protocols": protocols}


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
