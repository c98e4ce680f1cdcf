"""The training loop: contiguous streams, a state-initialisation policy, exact resume.

One optimiser step consumes ``grad_accum * K`` consecutive segments of every stream (K = 1 except
for ``bptt:K``). The carry is explicit:

    init = policy.initial_state(carried, resets, B)
    logits, final = model(inputs, init)
    carried = final            (kept with its graph inside a bptt group, detached between groups)

A run directory holds ``config.json`` (the resolved config), ``metrics.csv``, ``diagnostics.jsonl``,
``tokenizer.json`` and ``checkpoints/ckpt-*``.

Under ``torchrun`` the same loop runs on every rank with its own streams of the global batch
(``longssm.dist``, ``longssm.train.distributed``); rank 0 alone logs, validates and writes files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longssm import checkpoint as ckpt_io
from longssm.config import ConfigError, RunConfig
from longssm.data import ContiguousStreams, load_corpus, tokenizer_from_dict
from longssm.data.tokenizers import ByteTokenizer
from longssm.dist import env_world, init_distributed, owned_streams, wrap_model
from longssm.models import SSMLanguageModel
from longssm.models.state import detach_state, flatten_state, state_norms, unflatten_state
from longssm.train.distributed import ShardedPolicy, maybe_crash_for_test
from longssm.train.optim import lr_at, param_groups, set_lr
from longssm.train.policies import make_policy

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


class NonFiniteError(RuntimeError):
    """A loss or state became NaN/inf; the message names the step and the layer."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss_reset: float | None
    val_loss_stream: float | None
    seconds: float
    tokens: int
    history: list[dict] = field(default_factory=list)


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


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go to float32 for the loss; float32/float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def first_non_finite_layer(state) -> int | None:
    for i, layer in enumerate(state):
        for t in layer:
            if t.numel() and not bool(torch.isfinite(t).all()):
                return i
    return None


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


@torch.no_grad()
def validate(model, tokens, seq_len: int, batch_size: int, n_batches: int, autocast) -> tuple:
    """Mean loss at the training length on held-out tokens: zero-initialised and stream-carried."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = ContiguousStreams(tokens, batch_size=batch_size, seq_len=seq_len)
    n = min(n_batches, loader.num_steps_per_epoch)
    totals = {"reset": 0.0, "stream": 0.0}
    carried = None
    for _ in range(n):
        batch = next(loader)
        inputs, targets = batch.inputs.to(device), batch.targets.to(device).flatten()
        with autocast():
            logits, _ = model(inputs)
            totals["reset"] += F.cross_entropy(_upcast(logits).flatten(0, 1), targets).item()
            logits, carried = model(inputs, carried)
            totals["stream"] += F.cross_entropy(_upcast(logits).flatten(0, 1), targets).item()
    model.train(was_training)
    return totals["reset"] / max(n, 1), totals["stream"] / max(n, 1)


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


def _write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def accumulate_gradients(
    model,
    policy,
    loader,
    carried,
    grad_accum: int,
    step: int,
    device,
    autocast=None,
    reset_at_doc_boundaries: bool = False,
    no_sync=None,
):
    """Run the segments of one optimiser step and accumulate their gradients.

    The step takes ``grad_accum * K`` consecutive batches (K = ``policy.bptt_segments``); its loss
    is the mean of the segment losses. Inside a group of K segments the state keeps its graph, so
    gradients flow across segments; between groups it is detached (truncated BPTT).
    ``no_sync`` (DDP's ``model.no_sync``) wraps every group but the last, so ranks exchange
    gradients once per step.

    Returns: (mean loss of the step as a float, the carried state after the last segment).
    Raises NonFiniteError naming the step and the first layer whose state is not finite.
    """
    autocast = autocast or contextlib.nullcontext
    k = policy.bptt_segments
    n_micro = grad_accum * k
    step_loss = 0.0
    for group in range(grad_accum):
        last = group == grad_accum - 1
        group_loss = 0.0
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            for micro in range(group * k, group * k + k):
                batch = next(loader)
                resets = batch.resets
                if reset_at_doc_boundaries:
                    # a row whose segment opens a new document starts from zero
                    resets = resets | batch.doc_start_mask[:, 0]
                init = policy.initial_state(carried, resets.cpu(), batch.inputs.shape[0])
                with autocast():
                    logits, final = model(batch.inputs.to(device), init)  # (B, T, V)
                    loss = F.cross_entropy(
                        _upcast(logits).flatten(0, 1), batch.targets.to(device).flatten()
                    )
                bad = first_non_finite_layer(final)
                if not math.isfinite(loss.item()) or bad is not None:
                    where = f"layer {bad}" if bad is not None else "the output (all states finite)"
                    raise NonFiniteError(
                        f"non-finite training loss ({loss.item()}) or state at step {step + 1}, "
                        f"micro-step {micro}: first non-finite state in {where}"
                    )
                policy.observe(final)
                step_loss += loss.item() / n_micro
                group_loss = group_loss + loss / n_micro
                carried = final
            group_loss.backward()
        # truncated BPTT: the next group starts from the value of the state, not its graph
        carried = detach_state(carried)
    return step_loss, carried


def _silent(*args, **kwargs) -> None:
    """The ``log`` of ranks other than 0."""


def set_cpu_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch and, when it is installed, numba's parallel kernels."""
    from longssm.ops.selective_scan.fused_cpu import numba_available

    torch.set_num_threads(n)
    if numba_available():
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def train(
    cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False, log=print
) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; with ``resume`` continue exactly from its latest checkpoint.

    Under torchrun every rank calls this with the same arguments (see
    ``longssm.train.distributed``): rank r trains its streams of the global batch, rank 0 logs,
    validates and writes ``run_dir``; the returned validation losses are rank 0's only.

    Raises ConfigError / DataError / CheckpointError for bad input (nothing on disk is touched
    before they are raised) and NonFiniteError when training diverges.
    """
    run_dir = Path(run_dir)
    tc, dc = cfg.train, cfg.data
    batch_size = dc.effective_batch_size
    if tc.threads:
        set_cpu_threads(tc.threads)
    # a one-line ConfigError, before joining the job, when the N processes cannot share B streams
    rank, world_size, _ = env_world()
    owned_streams(rank, world_size, batch_size)
    ctx = init_distributed(tc.device)
    # this rank's streams: r, r+N, r+2N, ... (all B in a single process)
    rows = ctx.owned_streams(batch_size)
    if not ctx.is_main:
        log = _silent
    latest = None
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

    device = ctx.device
    dtype = getattr(torch, tc.dtype)
    torch.manual_seed(tc.seed)
    cache_dir = dc.cache_dir or None

    if latest is not None:
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
    elif ctx.is_main:
        tokenizer = build_tokenizer(dc.tokenizer, dc.corpus, cache_dir)
    if latest is None and ctx.enabled:
        # rank 0 built (for BPE: trained) the tokenizer; the other ranks receive it
        spec = ctx.broadcast_object(tokenizer.to_dict() if ctx.is_main else None)
        if not ctx.is_main:
            tokenizer = tokenizer_from_dict(spec)
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

    # markov: corpora are symbols with their own vocabulary; text corpora use the tokenizer's
    cfg.model.vocab_size = train_corpus.vocab_size
    model = SSMLanguageModel(cfg.model).to(device=device, dtype=dtype)
    policy = make_policy(tc.policy, model, noise_std=tc.noise_std, seed=tc.seed)
    optimizer = torch.optim.AdamW(
        param_groups(model, tc.lr, tc.weight_decay, tc.ssm_lr, extra=policy.parameters()),
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
        foreach=False,
    )
    loader = ContiguousStreams(
        train_tokens,
        batch_size=batch_size,
        seq_len=dc.seq_len,
        doc_starts=doc_starts,
        offset_seed=tc.seed if dc.random_offset else None,
        rows=rows,
    )

    step, carried, history = 0, None, []
    if latest is not None:
        ckpt_io.load_weights(model, latest)
        ckpt_io.optimizer_from_tensors(
            optimizer, ckpt_io.read_tensors(latest, "optimizer"), meta["optimizer"]
        )
        extra = ckpt_io.read_tensors(latest, "extra", required=False)
        loader.load_state_dict(meta["loader"])
        policy.load_state_tensors(extra)
        if meta.get("has_carried"):
            full = unflatten_state(extra, model.initial_state(batch_size), prefix="carried")
            # states are stored in global stream order, whatever the world size that wrote them
            carried = ctx.shard_state(full, batch_size)
        if "rng.torch" in extra:
            torch.set_rng_state(extra["rng.torch"])
        step = int(meta["step"])
        history = [r for r in _read_metrics(run_dir / "metrics.csv") if int(r["step"]) <= step]
        log(f"resuming {run_dir} from step {step} ({latest.name})")
    elif ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "config.json", "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
        with open(run_dir / "tokenizer.json", "w") as f:
            json.dump(tokenizer.to_dict(), f)
        unigram = unigram_entropy(train_tokens, train_corpus.vocab_size)
        log(
            f"run {run_dir}: {model.num_parameters():,} parameters, mixer {cfg.model.mixer}, "
            f"policy {tc.policy}, T={dc.seq_len}, B={batch_size}, {len(train_tokens):,} train tokens "
            f"(unigram entropy {unigram:.3f} nats)"
        )
    if ctx.enabled:
        log(
            f"data parallel: {ctx.world_size} ranks, {len(rows)} streams each (rank r owns "
            f"streams r, r+{ctx.world_size}, ...), backend {torch.distributed.get_backend()}"
        )
    if ctx.is_main:
        _write_metrics(run_dir / "metrics.csv", history)
    train_model = wrap_model(model, ctx)
    step_policy = ShardedPolicy(policy, ctx, batch_size) if ctx.enabled else policy
    no_sync = train_model.no_sync if ctx.enabled else None

    use_bf16 = tc.autocast == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def save(at_step: int) -> Path | None:
        # collective: every rank sends its carried rows and loader position, rank 0 writes
        full = ctx.gather_state(carried) if carried is not None else None
        positions = ctx.all_gather_object(loader.state_dict())
        if any(p != positions[0] for p in positions):
            raise RuntimeError(f"ranks disagree on the loader position at step {at_step}: {positions}")
        if not ctx.is_main:
            ctx.barrier()
            return None
        extra = dict(policy.state_tensors())
        extra["rng.torch"] = torch.get_rng_state()
        if full is not None:
            extra.update(flatten_state(full, prefix="carried"))
        meta_out = {
            "config": cfg.to_dict(),
            "step": at_step,
            "loader": positions[0],
            "tokenizer": tokenizer.to_dict(),
            "has_carried": full is not None,
            "world_size": ctx.world_size,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
        }
        path = ckpt_io.save_checkpoint(
            run_dir / "checkpoints" / f"{ckpt_io.CHECKPOINT_PREFIX}{at_step:08d}",
            model,
            meta_out,
            optimizer=optimizer,
            extra=extra,
        )
        ckpt_io.prune_checkpoints(run_dir, tc.keep_last)
        # no rank moves on before the checkpoint is complete
        ctx.barrier()
        return path

    n_micro = tc.grad_accum * policy.bptt_segments
    tokens_per_step = n_micro * batch_size * dc.seq_len
    model.train()
    start_time, last_log_time, last_log_step = time.perf_counter(), time.perf_counter(), step
    loss_value, val_reset, val_stream = float("nan"), None, None
    progress = None
    if tc.progress and ctx.is_main:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=tc.steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            desc=f"train {tc.policy}",
            # a log file (no terminal) gets one line every 30 s, not one per update
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
    diag_file = run_dir / "diagnostics.jsonl"
    try:
        while step < tc.steps:
            lr = lr_at(step, tc.lr, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            loss_value_step, carried = accumulate_gradients(
                train_model,
                step_policy,
                loader,
                carried,
                tc.grad_accum,
                step,
                device,
                autocast,
                reset_at_doc_boundaries=tc.reset_at_doc_boundaries,
                no_sync=no_sync,
            )
            # DDP averaged the model's gradients; a learned initial state is outside the model
            ctx.average_gradients(policy.parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]],
                tc.grad_clip if tc.grad_clip > 0 else float("inf"),
            ).item()
            if not math.isfinite(grad_norm):
                raise NonFiniteError(f"non-finite gradient norm at step {step + 1}")
            optimizer.step()
            step += 1
            # each rank's loss is the mean over its B/N rows: their mean is the global loss
            loss_value = ctx.mean(loss_value_step)
            if progress is not None:
                progress.update(1)
            val_reset = val_stream = None
            if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
                if ctx.is_main:
                    val_reset, val_stream = validate(
                        model, val_tokens, dc.seq_len, batch_size, tc.eval_batches, autocast
                    )
                # the other ranks wait while rank 0 validates the unwrapped model
                ctx.barrier()
            now = time.perf_counter()
            logs = step % tc.log_every == 0 or step == tc.steps or val_reset is not None
            if ctx.is_main and logs:
                tps = (step - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9)
                last_log_time, last_log_step = now, step
                row = {
                    "step": step,
                    "tokens": step * tokens_per_step,
                    "loss": round(loss_value, 6),
                    "lr": lr,
                    "grad_norm": round(grad_norm, 6),
                    "tokens_per_s": round(tps, 1),
                    "val_loss_reset": "" if val_reset is None else round(val_reset, 6),
                    "val_loss_stream": "" if val_stream is None else round(val_stream, 6),
                    "elapsed_s": round(now - start_time, 2),
                }
                history.append(row)
                with open(run_dir / "metrics.csv", "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=METRIC_FIELDS).writerow(row)
                if progress is not None:
                    progress.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tps:,.0f}")
            if tc.diag_every and step % tc.diag_every == 0:
                # collective: the maximum over every rank's streams
                norms = ctx.max(state_norms(carried)) if carried is not None else []
                if ctx.is_main:
                    weights = torch.sqrt(
                        sum(p.detach().float().pow(2).sum() for p in model.parameters())
                    )
                    record = {
                        "step": step,
                        "grad_norm": grad_norm,
                        "grad_weight_ratio": grad_norm / max(weights.item(), 1e-12),
                        "state_max_norm": norms,
                        "transition": transition_stats(model),
                    }
                    with open(diag_file, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == tc.steps:
                save(step)
            maybe_crash_for_test(step, ctx.rank)
    finally:
        if progress is not None:
            progress.close()
    ctx.close()
    return TrainResult(
        run_dir=run_dir,
        step=step,
        train_loss=loss_value,
        val_loss_reset=val_reset,
        val_loss_stream=val_stream,
        seconds=time.perf_counter() - start_time,
        tokens=step * tokens_per_step,
        history=history,
    )


def unigram_entropy(tokens, vocab_size: int) -> float:
    """Entropy (nats) of the empirical unigram distribution: the loss of a context-free model."""
    counts = torch.bincount(
        torch.from_numpy(np.asarray(tokens[: 1 << 24], dtype=np.int64)), minlength=vocab_size
    )
    probs = counts.double() / counts.sum()
    probs = probs[probs > 0]
    return float(-(probs * probs.log()).sum())
