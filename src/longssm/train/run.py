"""Setting up a training run, and its checkpoints: everything ``train`` needs, in one ``Run``.

``build_run`` joins the job (``longssm.dist``), checks the run directory, then, in this order
(the order of random-number use is part of a run's identity): seeds torch, builds or receives the
tokenizer, loads the corpora, builds the model (its initialisation draws from torch's generator),
the policy (its own generator), the optimiser and the loader (its own offset seed), and finally
either restores the latest checkpoint (``resume``) or writes ``config.json`` and
``tokenizer.json``. ``save_checkpoint`` is its mirror image.

A checkpoint holds the weights, the optimiser state, and in ``extra``: the policy's tensors
(generator state, statistics, learned states), torch's RNG state and the carried state of every
stream in global stream order (``carried.*``), so a run resumes exactly on any number of ranks.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longssm import checkpoint as ckpt_io
from longssm.config import ConfigError, DataConfig, RunConfig
from longssm.data import ContiguousStreams, load_corpus
from longssm.data.tokenizers import ByteTokenizer
from longssm.dist import DistContext, env_world, init_distributed, owned_streams, wrap_model
from longssm.interop.pretrained import load_pretrained_weights, source_tokenizer
from longssm.models import SSMLanguageModel
from longssm.models.state import ModelState, flatten_state, unflatten_state
from longssm.policies import StatePolicy, make_policy
from longssm.train.distributed import ShardedPolicy
from longssm.train.metrics import (
    read_metrics,
    truncate_diagnostics,
    unigram_entropy,
    write_metrics,
)
from longssm.train.optim import adamw, param_groups
from longssm.train.tensorboard import check_tensorboard

# Config fields that may change when a run is resumed (they do not alter the trajectory).
RESUMABLE_TRAIN_FIELDS = {
    "steps",
    "log_every",
    "eval_every",
    "eval_batches",
    "diag_every",
    "checkpoint_every",
    "keep_last",
    "progress",
    "device",
    "threads",
    "tensorboard",
}
# Bytes of training text a BPE tokenizer is trained on.
BPE_TRAIN_BYTES = 32 << 20
# The advisory lock file of a run directory (``RunLock``).
LOCK_NAME = ".lock"
# What a resume needs in a checkpoint's meta.json besides ``config`` and ``step``.
RESUME_KEYS = ("optimizer", "loader", "tokenizer")


class RunLock:
    """An advisory ``fcntl`` lock on ``run_dir/.lock``: one training process per run directory.

    ``acquire`` creates ``run_dir`` when needed and fails at once (ConfigError, one line) when
    another process holds the lock; ``release`` drops it and removes a run directory that this
    lock created and that stayed empty (a run refused before it wrote anything).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.created = False
        self.fd: int | None = None

    def acquire(self) -> None:
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ConfigError(
                    f"run directory {self.run_dir} is in use by another longssm process "
                    "(its .lock is held); wait for it or choose another --out"
                ) from exc
            raise

    def release(self) -> None:
        if self.fd is None:
            return
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self.created and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
            self.run_dir.rmdir()


@dataclass
class Run:
    """What the training loop needs: the built objects and where training starts."""

    cfg: RunConfig
    run_dir: Path
    ctx: DistContext
    log: Callable
    """``print``-like; silent on ranks other than 0."""
    tokenizer: object
    model: SSMLanguageModel
    policy: StatePolicy
    optimizer: torch.optim.Optimizer
    loader: ContiguousStreams
    """This rank's streams of the training split."""
    val_tokens: object
    batch_size: int
    """The global B."""
    autocast: Callable
    """A context-manager factory (``autocast``) for the forward passes."""
    step: int = 0
    """The step training starts from (the checkpoint's on resume)."""
    carried: ModelState | None = None
    """This rank's carried state at ``step`` (None at the start)."""
    history: list[dict] = field(default_factory=list)
    """The metrics rows written so far."""
    train_model: torch.nn.Module | None = None
    """``model``, in DistributedDataParallel under torchrun."""
    step_policy: StatePolicy | ShardedPolicy | None = None
    """``policy``, as one rank's ``ShardedPolicy`` under torchrun."""
    lock: RunLock | None = None
    """Rank 0's lock on ``run_dir`` (held until ``close``)."""
    last_checkpoint: Path | None = None
    """The newest checkpoint known to be good (resumed from or written by this process)."""
    init_source: dict | None = None
    """What ``train.init_from`` resolved to and loaded (``interop.pretrained.init_source_record``:
    kind, checkpoint directory, step, SHA-256 of the weights files); None for a random init."""

    def close(self) -> None:
        """Release the run directory's lock (rank 0); the job itself is closed by the caller."""
        if self.lock is not None:
            self.lock.release()

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def tokens_per_step(self) -> int:
        """Training tokens of one optimiser step, all ranks together."""
        n_micro = self.cfg.train.grad_accum * self.policy.bptt_segments
        return n_micro * self.batch_size * self.cfg.data.seq_len

    @property
    def no_sync(self) -> Callable | None:
        """DDP's ``no_sync`` (gradients are exchanged once per step), None in one process."""
        return self.train_model.no_sync if self.ctx.enabled else None


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``; otherwise a disabled one (dtypes unchanged)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _silent(*args, **kwargs) -> None:
    """The ``log`` of ranks other than 0."""


def build_run(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable) -> Run:
    """Everything ``train`` needs, restored from the latest valid checkpoint when ``resume``.

    Raises ConfigError / DataError / CheckpointError before anything on disk is touched (except
    the run directory's ``.lock``, removed again when the directory was new).
    """
    check_run_dir(run_dir)
    if cfg.train.tensorboard:
        check_tensorboard()
    ctx, lock, latest, meta = _join(cfg, run_dir, resume, log)
    try:
        run = _build(cfg, run_dir, ctx, latest, meta, log)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    return run


def _build(cfg: RunConfig, run_dir: Path, ctx: DistContext, latest, meta, log) -> Run:
    """``build_run`` after the run directory is locked and its checkpoint chosen."""
    tc, dc = cfg.train, cfg.data
    torch.manual_seed(tc.seed)
    tokenizer = _share_tokenizer(ctx, dc, meta, latest)
    vocab_size, train_tokens, doc_starts, val_tokens = _load_corpora(ctx, dc, tokenizer)
    check_split_sizes(dc, tc, len(train_tokens), len(val_tokens))
    if tc.init_from:
        # a pretrained model keeps its embedding; the tokenizer's ids must fit in it
        check_vocab_fits(vocab_size, cfg.model.vocab_size, tc.init_from)
    else:
        # markov: corpora are symbols with their own vocabulary; text corpora use the tokenizer's
        cfg.model.vocab_size = vocab_size
    model = build_model(cfg, ctx.device)
    # provenance of --init-from: recorded in every checkpoint (meta.json ``init_source``)
    init_source = meta.get("init_source") if meta is not None else None
    if tc.init_from and latest is None:
        init_source = load_pretrained_weights(model, tc.init_from)
    policy = make_policy(tc.policy, model, noise_std=tc.noise_std, seed=tc.seed)
    optimizer = adamw(
        param_groups(model, tc.lr, tc.weight_decay, tc.ssm_lr, extra=policy.parameters()),
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
    )
    if ctx.is_main:
        check_disk_space(run_dir, model)
    loader = ContiguousStreams(
        train_tokens,
        batch_size=dc.effective_batch_size,
        seq_len=dc.seq_len,
        doc_starts=doc_starts,
        offset_seed=tc.seed if dc.random_offset else None,
        # this rank's streams: r, r+N, r+2N, ... (all B in a single process)
        rows=ctx.owned_streams(dc.effective_batch_size),
    )
    run = Run(
        cfg, run_dir, ctx, log if ctx.is_main else _silent, tokenizer, model, policy, optimizer,
        loader, val_tokens, dc.effective_batch_size,
        functools.partial(autocast, ctx.device, tc.autocast == "bf16"),
    )  # fmt: skip
    run.init_source = init_source
    if latest is not None:
        _restore(run, latest, meta)
    elif ctx.is_main:
        _start_run_dir(run, train_tokens, vocab_size)
    if ctx.enabled:
        run.log(
            f"data parallel: {ctx.world_size} ranks, {len(loader.rows)} streams each (rank r "
            f"owns streams r, r+{ctx.world_size}, ...), backend {torch.distributed.get_backend()}"
        )
    if ctx.is_main:
        write_metrics(run_dir / "metrics.csv", run.history)
        truncate_diagnostics(run_dir / "diagnostics.jsonl", run.step)
    run.train_model = wrap_model(model, ctx)
    run.step_policy = ShardedPolicy(policy, ctx, run.batch_size) if ctx.enabled else policy
    model.train()
    return run


def check_vocab_fits(vocab_size: int, embedding_rows: int, source: str) -> None:
    """ConfigError (one line) when token ids up to ``vocab_size`` do not fit the embedding."""
    if vocab_size > embedding_rows:
        raise ConfigError(
            f"the tokenizer has {vocab_size} ids but the model of {source} embeds {embedding_rows}; "
            "give a data.tokenizer that fits (default: the tokenizer of --init-from)"
        )


def check_run_dir(run_dir: Path) -> None:
    """ConfigError (one line) unless ``run_dir`` is, or can be made, a writable folder."""
    if not str(run_dir).strip():
        raise ConfigError("the run directory (--out) must not be empty")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a folder")
    existing = run_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create run directory {run_dir}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run directory {run_dir} is not writable ({existing} is read-only)")
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and not os.access(checkpoints, os.W_OK | os.X_OK):
        raise ConfigError(f"{checkpoints} is not writable")


def check_split_sizes(dc: DataConfig, tc, n_train: int, n_val: int) -> None:
    """ConfigError (one line) when a split cannot give one batch of B streams of T+1 tokens."""
    need = dc.effective_batch_size * dc.seq_len + 1
    for split, n in (("training", n_train), ("validation", n_val)):
        if n < need:
            raise ConfigError(
                f"the {split} split has {n:,} tokens, fewer than one batch needs "
                f"(B={dc.effective_batch_size} streams x T={dc.seq_len} + 1 = {need:,}); use a "
                "larger corpus or data.max_tokens, or a smaller batch or seq_len"
            )


def build_model(cfg: RunConfig, device: torch.device) -> SSMLanguageModel:
    """The run's model on ``device``; ConfigError when it cannot be allocated."""
    try:
        return SSMLanguageModel(cfg.model).to(device=device, dtype=getattr(torch, cfg.train.dtype))
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise ConfigError(f"the model does not fit in memory on {device}: {exc}") from exc
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower() and "memory" not in str(exc).lower():
            raise
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"the model does not fit in memory on {device}: {first}") from exc


def check_disk_space(run_dir: Path, model: torch.nn.Module) -> None:
    """ConfigError when the disk cannot hold two checkpoints (a new one beside the old)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # weights + two AdamW moments, twice (the temporary copy beside the previous one)
    need = 6 * weights + (1 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise ConfigError(
            f"not enough disk space in {run_dir}: {free:,} bytes free, a checkpoint needs about "
            f"{need // 2:,} (twice that while it replaces the previous one)"
        )


def _join(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable):
    """Join the job, lock and look at ``run_dir``: (ctx, lock, checkpoint or None, its meta)."""
    # a one-line ConfigError, before joining the job, when the N processes cannot share B streams
    rank, world_size, _ = env_world()
    owned_streams(rank, world_size, cfg.data.effective_batch_size)
    ctx = init_distributed(cfg.train.device)
    lock = None
    try:
        if ctx.is_main:
            lock = RunLock(run_dir)
            lock.acquire()
            ckpt_io.clean_stale(run_dir)
        # rank 0 has cleaned run_dir before the others look at it
        ctx.barrier()
        latest, meta = _choose_start(cfg, run_dir, resume, log if ctx.is_main else _silent)
        # every rank has looked at run_dir before rank 0 writes into it
        ctx.barrier()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return ctx, lock, latest, meta


def _choose_start(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable):
    """(checkpoint to resume from or None, its meta or None); refuses an occupied directory.

    A resume takes the newest checkpoint that verifies (``verify_checkpoint``), saying in one line
    which damaged ones it skipped; a run with ``config.json`` but no checkpoint starts again from
    step 0 with the same config.
    """
    found = ckpt_io.checkpoint_dirs(run_dir)
    config_path = run_dir / "config.json"
    if not resume:
        if found or config_path.exists():
            raise ConfigError(
                f"run directory {run_dir} already holds a run; pass --resume to continue it or "
                "choose another --out"
            )
        return None, None
    if not found:
        if not config_path.is_file():
            raise ckpt_io.CheckpointError(
                f"{run_dir} holds no run to resume (no checkpoints/ckpt-* and no config.json)"
            )
        _check_resume_config(read_run_config(run_dir), cfg, config_path)
        log(f"{run_dir} has no checkpoint yet: starting it again from step 0")
        return None, None
    errors = []
    for ckpt in reversed(found):
        try:
            meta = ckpt_io.verify_checkpoint(ckpt, RESUME_KEYS)
        except ckpt_io.CheckpointError as exc:
            errors.append(f"{ckpt.name} ({exc})")
            continue
        _check_resume_config(meta["config"], cfg, ckpt)
        if errors:
            log(f"skipping damaged checkpoint(s) {'; '.join(errors)}: resuming from {ckpt.name}")
        return ckpt, meta
    raise ckpt_io.CheckpointError(f"no valid checkpoint to resume in {run_dir}: {errors[0]}")


def resume_base_config(run_dir: str | os.PathLike) -> dict:
    """The config a ``--resume`` without a config file starts from, as a mapping.

    The newest checkpoint whose ``meta.json`` reads (its config holds the resumable fields as the
    last session left them), else ``config.json`` (a run stopped before its first checkpoint).
    Overrides then apply on top; ``build_run`` refuses changes to anything but the resumable fields.
    """
    run_dir = Path(run_dir)
    for ckpt in reversed(ckpt_io.checkpoint_dirs(run_dir)):
        try:
            return ckpt_io.read_meta(ckpt)["config"]
        except ckpt_io.CheckpointError:
            continue
    if (run_dir / "config.json").is_file():
        return read_run_config(run_dir)
    raise ckpt_io.CheckpointError(
        f"{run_dir} holds no run to resume (no checkpoints/ckpt-* and no config.json)"
    )


def read_run_config(run_dir: Path) -> dict:
    """The config a run directory was started with (``config.json``), as a mapping."""
    path = Path(run_dir) / "config.json"
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"corrupt {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a run config")
    return data


def _check_resume_config(saved: dict, cfg: RunConfig, source: Path) -> None:
    now = cfg.to_dict()
    for section in ("model", "data", "train"):
        if not isinstance(saved.get(section, {}), dict):
            raise ckpt_io.CheckpointError(f"{source}: config.{section} is not a mapping")
        for key, value in saved.get(section, {}).items():
            if section == "train" and key in RESUMABLE_TRAIN_FIELDS:
                continue
            if section == "model" and key == "vocab_size":
                continue
            if now[section].get(key) != value:
                raise ckpt_io.CheckpointError(
                    f"{source.name} was written with {section}.{key}={value!r}, but this run has "
                    f"{section}.{key}={now[section].get(key)!r}; only train.{{"
                    f"{','.join(sorted(RESUMABLE_TRAIN_FIELDS))}}} may change on resume"
                )


def build_tokenizer(spec: str, corpus: str, cache_dir: str | None, text_field: str = "text"):
    """The run's tokenizer: bytes, a tokenizer.json (``hf:PATH``), the tokenizer stored in a run's
    checkpoint (``run:PATH``), or a byte-level BPE trained locally on the training split."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("run:"):
        return source_tokenizer(spec[4:])
    if spec.startswith("hf:"):
        from longssm.data import HFTokenizer

        return HFTokenizer.load(spec[3:])
    from longssm.data import BPETokenizer

    vocab = int(spec.split(":", 1)[1])
    byte_split = load_corpus(corpus, ByteTokenizer(), "train", cache_dir=cache_dir,
                             text_field=text_field)
    tokens = np.asarray(byte_split.tokens[:BPE_TRAIN_BYTES])
    bounds = [int(s) for s in byte_split.doc_starts if s < len(tokens)] + [len(tokens)]
    if bounds[0] != 0:
        bounds.insert(0, 0)
    texts = (
        bytes(tokens[a:b][tokens[a:b] < 256].astype(np.uint8)).decode("utf-8", "replace")
        for a, b in zip(bounds[:-1], bounds[1:])
    )
    return BPETokenizer.train(texts, vocab_size=vocab)


def _share_tokenizer(ctx: DistContext, dc: DataConfig, meta: dict | None, ckpt: Path | None):
    """The checkpoint's tokenizer on resume; else rank 0 builds it and the other ranks receive it."""
    if meta is not None:
        return ckpt_io.load_tokenizer(meta, ckpt)
    tokenizer = (
        build_tokenizer(dc.tokenizer, dc.corpus, dc.cache_dir or None, dc.text_field)
        if ctx.is_main else None
    )
    if ctx.enabled:
        # rank 0 built (for BPE: trained) the tokenizer; the other ranks receive it
        spec = ctx.broadcast_object(tokenizer.to_dict() if ctx.is_main else None)
        if not ctx.is_main:
            from longssm.data import tokenizer_from_dict

            tokenizer = tokenizer_from_dict(spec)
    return tokenizer


def _load_corpora(ctx: DistContext, dc: DataConfig, tokenizer):
    """(vocabulary size, train tokens, train document starts, validation tokens)."""
    cache_dir = dc.cache_dir or None
    if not ctx.is_main:
        # rank 0 fills the token cache first; the other ranks then read it instead of tokenising
        ctx.barrier()
    train_corpus = load_corpus(dc.corpus, tokenizer, "train", cache_dir=cache_dir,
                               text_field=dc.text_field)
    val_corpus = load_corpus(dc.corpus, tokenizer, "validation", cache_dir=cache_dir,
                             text_field=dc.text_field)
    if ctx.is_main:
        ctx.barrier()
    train_tokens, val_tokens = train_corpus.tokens, val_corpus.tokens
    doc_starts = train_corpus.doc_starts
    if dc.max_tokens:
        train_tokens, val_tokens = train_tokens[: dc.max_tokens], val_tokens[: dc.max_tokens]
        doc_starts = doc_starts[doc_starts < dc.max_tokens]
    return train_corpus.vocab_size, train_tokens, doc_starts, val_tokens


def _restore(run: Run, latest: Path, meta: dict) -> None:
    """Load the verified checkpoint ``latest`` into ``run``: weights, optimiser, loader, policy,
    carried state and RNG. Anything that does not fit is a CheckpointError."""
    ckpt_io.load_weights(run.model, latest)
    ckpt_io.optimizer_from_tensors(
        run.optimizer, ckpt_io.read_tensors(latest, "optimizer"), meta["optimizer"]
    )
    extra = ckpt_io.read_tensors(latest, "extra", required=False)
    try:
        run.loader.load_state_dict(meta["loader"])
        run.policy.load_state_tensors(extra)
        if meta.get("has_carried"):
            full = unflatten_state(extra, run.model.initial_state(run.batch_size), prefix="carried")
            # states are stored in global stream order, whatever the world size that wrote them
            run.carried = run.ctx.shard_state(full, run.batch_size)
        if "rng.torch" in extra:
            torch.set_rng_state(extra["rng.torch"])
    except (KeyError, TypeError, RuntimeError, ValueError, IndexError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ckpt_io.CheckpointError(f"checkpoint {latest} does not fit this run: {message}") from exc
    run.step = int(meta["step"])
    run.last_checkpoint = latest
    rows = read_metrics(run.run_dir / "metrics.csv")
    run.history = [r for r in rows if _row_step(r) <= run.step]
    run.log(f"resuming {run.run_dir} from step {run.step} ({latest.name})")


def _row_step(row: dict) -> int:
    try:
        if None in row.values() or None in row:
            raise ValueError("torn row")
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        # a torn last line (killed while appending): drop it
        return 1 << 62


def _start_run_dir(run: Run, train_tokens, vocab_size: int) -> None:
    """Write ``config.json`` and ``tokenizer.json`` of a new run and log what it trains."""
    cfg = run.cfg
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / "config.json", "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    with open(run.run_dir / "tokenizer.json", "w") as f:
        json.dump(run.tokenizer.to_dict(), f)
    unigram = unigram_entropy(train_tokens, vocab_size)
    if run.init_source is not None:
        src = run.init_source
        step = "" if src["step"] is None else f" (step {src['step']})"
        digests = ", ".join(f"{Path(f).name} sha256 {d[:12]}" for f, d in src["sha256"].items())
        run.log(f"initialised from {src['kind']} {src['checkpoint']}{step}: {digests}")
    run.log(
        f"run {run.run_dir}: {run.model.num_parameters():,} parameters, mixer {cfg.model.mixer}, "
        f"policy {cfg.train.policy}, T={cfg.data.seq_len}, B={run.batch_size}, "
        f"{len(train_tokens):,} train tokens (unigram entropy {unigram:.3f} nats)"
    )


def save_checkpoint(run: Run, step: int, carried: ModelState | None) -> Path | None:
    """Write the checkpoint of ``step`` (collective: call on every rank); rank 0's path, else None.

    Every rank sends its carried rows and loader position; rank 0 writes them in global stream
    order with the weights, the optimiser, the policy's tensors and torch's RNG state, then prunes
    old checkpoints (``train.keep_last``). No rank returns before the checkpoint is complete.
    """
    ctx = run.ctx
    full = ctx.gather_state(carried) if carried is not None else None
    positions = ctx.all_gather_object(run.loader.state_dict())
    if any(p != positions[0] for p in positions):
        raise RuntimeError(f"ranks disagree on the loader position at step {step}: {positions}")
    if not ctx.is_main:
        ctx.barrier()
        return None
    extra = dict(run.policy.state_tensors())
    extra["rng.torch"] = torch.get_rng_state()
    if full is not None:
        extra.update(flatten_state(full, prefix="carried"))
    meta = {
        "config": run.cfg.to_dict(),
        "step": step,
        "loader": positions[0],
        "tokenizer": run.tokenizer.to_dict(),
        "has_carried": full is not None,
        "world_size": ctx.world_size,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    if run.init_source is not None:
        meta["init_source"] = run.init_source
    path = ckpt_io.save_checkpoint(
        run.run_dir / "checkpoints" / f"{ckpt_io.CHECKPOINT_PREFIX}{step:08d}",
        run.model,
        meta,
        optimizer=run.optimizer,
        extra=extra,
    )
    run.last_checkpoint = path
    ckpt_io.prune_checkpoints(run.run_dir, run.cfg.train.keep_last)
    # no rank moves on before the checkpoint is complete
    ctx.barrier()
    return path
