"""The training loop: contiguous streams, a state-initialisation policy, exact resume.

One optimiser step consumes ``grad_accum * K`` consecutive segments of every stream (K = 1 except
for ``bptt:K``). The carry is explicit:

    init = policy.initial_state(carried, resets, B)
    logits, final = model(inputs, init)
    carried = final            (kept with its graph inside a bptt group, detached between groups)

``train`` reads top to bottom: ``build_run`` (``longssm.train.run``) sets up the tokenizer,
corpora, model, optimiser, policy, loader and resume; then the step loop: learning rate,
``accumulate_gradients``, clip, optimiser step, validation, logging (``longssm.train.metrics``),
diagnostics, checkpoint (``save_checkpoint``).

A run directory holds ``config.json`` (the resolved config), ``metrics.csv``, ``diagnostics.jsonl``,
``tokenizer.json`` and ``checkpoints/ckpt-*``.

Under ``torchrun`` the same loop runs on every rank with its own streams of the global batch
(``longssm.dist``, ``longssm.train.distributed``); rank 0 alone logs, validates and writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longssm.config import RunConfig
from longssm.data import ContiguousStreams
from longssm.models.state import detach_state, state_norms
from longssm.ops.cross_entropy import cross_entropy
from longssm.runtime import keep_freed_memory, set_cpu_threads
from longssm.train.metrics import MetricsLog, diagnostics, unigram_entropy
from longssm.train.optim import lr_at, set_lr
from longssm.train.run import build_run, save_checkpoint

__all__ = [
    "NonFiniteError",
    "TrainResult",
    "accumulate_gradients",
    "train",
    "unigram_entropy",
    "validate",
]


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
    keep_freed_memory()  # a training process: see longssm.runtime
    if cfg.train.threads:
        set_cpu_threads(cfg.train.threads)
    run = build_run(cfg, Path(run_dir), resume, log)
    try:
        step, loss, val, metrics = _train_steps(run)
    finally:
        run.close()
    run.ctx.close()
    return TrainResult(
        run_dir=run.run_dir,
        step=step,
        train_loss=loss,
        val_loss_reset=val[0],
        val_loss_stream=val[1],
        seconds=metrics.elapsed(),
        tokens=step * run.tokens_per_step,
        history=metrics.history,
    )


def _train_steps(run):
    """The step loop of ``train`` from ``run.step``; returns (step, loss, (val losses), metrics)."""
    cfg = run.cfg
    tc, ctx, optimizer = cfg.train, run.ctx, run.optimizer
    step, carried = run.step, run.carried
    tensorboard = run.run_dir / "tb" if tc.tensorboard and ctx.is_main else None
    metrics = MetricsLog(run.run_dir / "metrics.csv", run.history, run.tokens_per_step, step,
                         tensorboard)
    progress = open_progress(tc.policy, step, tc.steps) if tc.progress and ctx.is_main else None
    loss, val = float("nan"), (None, None)
    try:
        while step < tc.steps:
            lr = lr_at(step, tc.lr, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            step_loss, carried = accumulate_gradients(
                run.train_model, run.step_policy, run.loader, carried, tc.grad_accum, step,
                run.device, run.autocast, reset_at_doc_boundaries=tc.reset_at_doc_boundaries,
                no_sync=run.no_sync,
            )  # fmt: skip
            # DDP averaged the model's gradients; a learned initial state is outside the model
            ctx.average_gradients(run.policy.parameters())
            params = [p for g in optimizer.param_groups for p in g["params"]]
            # the norm first: clipping by a NaN norm would spread the NaN to every gradient
            total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            grad_norm = total.item()
            if not math.isfinite(grad_norm):
                diverged(run, step + 1, "gradient", first_non_finite_module(run, grads=True))
            clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            torch.nn.utils.clip_grads_with_norm_(params, clip, total)
            try:
                optimizer.step()
            except RuntimeError as exc:
                if "overflow" not in str(exc):
                    raise
                # AdamW's step size lr / (1 - beta1^t) left float32's range
                diverged(run, step + 1, "optimiser step size (learning rate too large?)", None)
            step += 1
            # checked before anything is saved: a checkpoint never holds diverged weights
            bad = first_non_finite_module(run)
            if bad is not None:
                diverged(run, step, "parameter", bad)
            # each rank's loss is the mean over its B/N rows: their mean is the global loss
            loss = ctx.mean(step_loss)
            if progress is not None:
                progress.update(1)
            val = (None, None)
            if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
                if ctx.is_main:
                    val = validate(
                        run.model, run.val_tokens, cfg.data.seq_len, run.batch_size,
                        tc.eval_batches, run.autocast,
                    )  # fmt: skip
                # the other ranks wait while rank 0 validates the unwrapped model
                ctx.barrier()
            if ctx.is_main and (step % tc.log_every == 0 or step == tc.steps or val[0] is not None):
                row = metrics.record(step, loss, lr, grad_norm, *val)
                if progress is not None:
                    progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}")
            if tc.diag_every and step % tc.diag_every == 0:
                # collective: the maximum over every rank's streams
                norms = ctx.max(state_norms(carried)) if carried is not None else []
                if ctx.is_main:
                    record = diagnostics(step, grad_norm, run.model, norms)
                    metrics.diagnostics(run.run_dir / "diagnostics.jsonl", record)
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == tc.steps:
                bad = first_non_finite_optimizer_state(optimizer)
                if bad is not None:
                    diverged(run, step, "optimiser state", bad)
                save_checkpoint(run, step, carried)
    finally:
        metrics.close()
        if progress is not None:
            progress.close()
    return step, loss, val, metrics


def first_non_finite_module(run, grads: bool = False) -> tuple[str, str] | None:
    """(module, parameter) of the first parameter (or its gradient) holding a NaN or infinity.

    Model parameters first, in registration order, then the policy's (a learned initial state).
    """
    named = [(n, p) for n, p in run.model.named_parameters()]
    named += [(f"policy.{i}", p) for i, p in enumerate(run.policy.parameters())]
    tensors = [p.grad if grads else p for _, p in named]
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.numel()]
    # one synchronisation in the common case (everything finite)
    if not flags or bool(torch.stack(flags).all()):
        return None
    for name, param in named:
        tensor = param.grad if grads else param
        if tensor is not None and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            module = name.rpartition(".")[0] or "(model)"
            return module, name
    return None


def first_non_finite_optimizer_state(optimizer) -> tuple[str, str] | None:
    """(``optimizer``, 'param_index.name') of the first non-finite optimiser tensor, else None."""
    for index, (_, state) in enumerate(optimizer.state.items()):
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
                if not bool(torch.isfinite(value).all()):
                    return "optimizer", f"{index}.{name}"
    return None


def diverged(run, step: int, what: str, where: tuple[str, str] | None):
    """Raise NonFiniteError naming the step, the first bad module and the last good checkpoint."""
    place = f" in {where[0]} ({where[1]})" if where is not None else ""
    last = run.last_checkpoint if run.last_checkpoint is not None else "none written yet"
    raise NonFiniteError(
        f"training diverged at step {step}: non-finite {what}{place}; nothing was saved for this "
        f"step; last good checkpoint: {last}"
    )


def open_progress(policy: str, step: int, steps: int):
    """A tqdm progress bar from ``step`` to ``steps``."""
    from tqdm.auto import tqdm

    return tqdm(
        total=steps,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        desc=f"train {policy}",
        # a log file (no terminal) gets one line every 30 s, not one per update
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )


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
                    loss = cross_entropy(
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
            totals["reset"] += cross_entropy(_upcast(logits).flatten(0, 1), targets).item()
            logits, carried = model(inputs, carried)
            totals["stream"] += cross_entropy(_upcast(logits).flatten(0, 1), targets).item()
    model.train(was_training)
    return totals["reset"] / max(n, 1), totals["stream"] / max(n, 1)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go to float32 for the loss; float32/float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def first_non_finite_layer(state) -> int | None:
    for i, layer in enumerate(state):
        for t in layer:
            if t.numel() and not bool(torch.isfinite(t).all()):
                return i
    return None
