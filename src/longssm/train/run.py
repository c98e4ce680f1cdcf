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

import functools
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longssm import checkpoint as ckpt_io
from longssm.config import ConfigError, DataConfig, RunConfig
from longssm.data import ContiguousStreams, load_corpus, tokenizer_from_dict
from longssm.data.tokenizers import ByteTokenizer
from longssm.dist import DistContext, env_world, init_distributed, owned_streams, wrap_model
from longssm.models import SSMLanguageModel
from longssm.models.state import ModelState, flatten_state, unflatten_state
from longssm.train.distributed import ShardedPolicy
from longssm.train.metrics import read_metrics, unigram_entropy, write_metrics
from longssm.train.optim import param_groups
from longssm.train.policies import StatePolicy, make_policy

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
}
# Bytes of training text a BPE tokenizer is trained on.
BPE_TRAIN_BYTES = 32 << 20


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
    """Everything ``train`` needs, restored from the latest checkpoint when ``resume``.

    Raises ConfigError / DataError / CheckpointError before anything on disk is touched.
    """
    tc, dc = cfg.train, cfg.data
    ctx, latest, meta = _join(cfg, run_dir, resume)
    torch.manual_seed(tc.seed)
    tokenizer = _share_tokenizer(ctx, dc, meta)
    vocab_size, train_tokens, doc_starts, val_tokens = _load_corpora(ctx, dc, tokenizer)
    # markov: corpora are symbols with their own vocabulary; text corpora use the tokenizer's
    cfg.model.vocab_size = vocab_size
    model = SSMLanguageModel(cfg.model).to(device=ctx.device, dtype=getattr(torch, tc.dtype))
    policy = make_policy(tc.policy, model, noise_std=tc.noise_std, seed=tc.seed)
    optimizer = torch.optim.AdamW(
        param_groups(model, tc.lr, tc.weight_decay, tc.ssm_lr, extra=policy.parameters()),
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
        foreach=False,
    )
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
    run.train_model = wrap_model(model, ctx)
    run.step_policy = ShardedPolicy(policy, ctx, run.batch_size) if ctx.enabled else policy
    model.train()
    return run


def _join(cfg: RunConfig, run_dir: Path, resume: bool):
    """Join the job and look at ``run_dir``: (ctx, latest checkpoint or None, its meta or None)."""
    # a one-line ConfigError, before joining the job, when the N processes cannot share B streams
    rank, world_size, _ = env_world()
    owned_streams(rank, world_size, cfg.data.effective_batch_size)
    ctx = init_distributed(cfg.train.device)
    latest = meta = None
    if resume:
        latest = ckpt_io.resolve_checkpoint(run_dir)
        meta = ckpt_io.read_meta(latest)
        _check_resume_config(meta["config"], cfg)
    elif ckpt_io.checkpoint_dirs(run_dir) or (run_dir / "config.json").exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it or choose "
            "another --out"
        )
    # every rank has looked at run_dir before rank 0 writes into it
    ctx.barrier()
    return ctx, latest, meta


def _check_resume_config(saved: dict, cfg: RunConfig) -> None:
    now = cfg.to_dict()
    for section in ("model", "data", "train"):
        for key, value in saved.get(section, {}).items():
            if section == "train" and key in RESUMABLE_TRAIN_FIELDS:
                continue
            if section == "model" and key == "vocab_size":
                continue
            if now[section].get(key) != value:
                raise ckpt_io.CheckpointError(
                    f"checkpoint was written with {section}.{key}={value!r}, but this run has "
                    f"{section}.{key}={now[section].get(key)!r}; resume with the same config"
                )


def build_tokenizer(spec: str, corpus: str, cache_dir: str | None):
    """The run's tokenizer: bytes, or a byte-level BPE trained locally on the training split."""
    if spec == "bytes":
        return ByteTokenizer()
    from longssm.data import BPETokenizer

    vocab = int(spec.split(":", 1)[1])
    byte_split = load_corpus(corpus, ByteTokenizer(), "train", cache_dir=cache_dir)
    tokens = np.asarray(byte_split.tokens[:BPE_TRAIN_BYTES])
    bounds = [int(s) for s in byte_split.doc_starts if s < len(tokens)] + [len(tokens)]
    if bounds[0] != 0:
        bounds.insert(0, 0)
    texts = (
        bytes(tokens[a:b][tokens[a:b] < 256].astype(np.uint8)).decode("utf-8", "replace")
        for a, b in zip(bounds[:-1], bounds[1:])
    )
    return BPETokenizer.train(texts, vocab_size=vocab)


def _share_tokenizer(ctx: DistContext, dc: DataConfig, meta: dict | None):
    """The checkpoint's tokenizer on resume; else rank 0 builds it and the other ranks receive it."""
    if meta is not None:
        return tokenizer_from_dict(meta["tokenizer"])
    tokenizer = (
        build_tokenizer(dc.tokenizer, dc.corpus, dc.cache_dir or None) if ctx.is_main else None
    )
    if ctx.enabled:
        # rank 0 built (for BPE: trained) the tokenizer; the other ranks receive it
        spec = ctx.broadcast_object(tokenizer.to_dict() if ctx.is_main else None)
        if not ctx.is_main:
            tokenizer = tokenizer_from_dict(spec)
    return tokenizer


def _load_corpora(ctx: DistContext, dc: DataConfig, tokenizer):
    """(vocabulary size, train tokens, train document starts, validation tokens)."""
    cache_dir = dc.cache_dir or None
    if not ctx.is_main:
        # rank 0 fills the token cache first; the other ranks then read it instead of tokenising
        ctx.barrier()
    train_corpus = load_corpus(dc.corpus, tokenizer, "train", cache_dir=cache_dir)
    val_corpus = load_corpus(dc.corpus, tokenizer, "validation", cache_dir=cache_dir)
    if ctx.is_main:
        ctx.barrier()
    train_tokens, val_tokens = train_corpus.tokens, val_corpus.tokens
    doc_starts = train_corpus.doc_starts
    if dc.max_tokens:
        train_tokens, val_tokens = train_tokens[: dc.max_tokens], val_tokens[: dc.max_tokens]
        doc_starts = doc_starts[doc_starts < dc.max_tokens]
    return train_corpus.vocab_size, train_tokens, doc_starts, val_tokens


def _restore(run: Run, latest: Path, meta: dict) -> None:
    """Load the checkpoint ``latest`` into ``run``: weights, optimiser, loader, policy, state, RNG."""
    ckpt_io.load_weights(run.model, latest)
    ckpt_io.optimizer_from_tensors(
        run.optimizer, ckpt_io.read_tensors(latest, "optimizer"), meta["optimizer"]
    )
    extra = ckpt_io.read_tensors(latest, "extra", required=False)
    run.loader.load_state_dict(meta["loader"])
    run.policy.load_state_tensors(extra)
    if meta.get("has_carried"):
        full = unflatten_state(extra, run.model.initial_state(run.batch_size), prefix="carried")
        # states are stored in global stream order, whatever the world size that wrote them
        run.carried = run.ctx.shard_state(full, run.batch_size)
    if "rng.torch" in extra:
        torch.set_rng_state(extra["rng.torch"])
    run.step = int(meta["step"])
    rows = read_metrics(run.run_dir / "metrics.csv")
    run.history = [r for r in rows if int(r["step"]) <= run.step]
    run.log(f"resuming {run.run_dir} from step {run.step} ({latest.name})")


def _start_run_dir(run: Run, train_tokens, vocab_size: int) -> None:
    """Write ``config.json`` and ``tokenizer.json`` of a new run and log what it trains."""
    cfg = run.cfg
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / "config.json", "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    with open(run.run_dir / "tokenizer.json", "w") as f:
        json.dump(run.tokenizer.to_dict(), f)
    unigram = unigram_entropy(train_tokens, vocab_size)
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
    path = ckpt_io.save_checkpoint(
        run.run_dir / "checkpoints" / f"{ckpt_io.CHECKPOINT_PREFIX}{step:08d}",
        run.model,
        meta,
        optimizer=run.optimizer,
        extra=extra,
    )
    ckpt_io.prune_checkpoints(run.run_dir, run.cfg.train.keep_last)
    # no rank moves on before the checkpoint is complete
    ctx.barrier()
    return path
