"""The tagging trainer's loop: the training floor's state policies and checkpoints, for task batches.

An *episode* is one batch of fresh task sequences (one length n, drawn uniformly from the training
lengths). It is cut along time into ``segments`` consecutive pieces, and every piece is one
optimiser step; the policy (``longssm.policies``, the classes ``longssm train`` uses, named by
``longssm.config.POLICY_GRAMMAR``) gives each piece its initial state from the carried one,
exactly as the language-model loop does:

    init = policy.initial_state(carried, resets, B)   # resets: rows starting a new sequence
    outputs, final = model(piece, init)
    policy.observe(final)
    carried = detach(final)                           # truncated BPTT: one piece per step

Resets are raised at the first piece of every episode (``reset_between_sequences``); without
them the carried state runs on from the previous, unrelated sequence, as a LongSSM stream runs on
across documents. With one segment and the ``zero`` policy this is the plain tagging loop.

Checkpoints are the training floor's (``longssm.checkpoint``: safetensors + checksummed JSON)
under ``run_dir/checkpoints/ckpt-NNNNNNNN``: weights, AdamW state, the policy's tensors, the
carried state, torch's RNG state, and in the metadata the resolved configs, the step, the piece
of the episode and the NumPy generator's state at the episode's start (the episode is redrawn on
resume), and the loss history. Resuming continues bit for bit where the run stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longssm import checkpoint as ckpt_io
from longssm.models.state import detach_state, flatten_state, unflatten_state
from longssm.policies import StatePolicy, ZeroPolicy, make_policy

# Fields of ``TaskRunConfig`` that change training: a resume must find them unchanged.
TRAINING_FIELDS = ("task", "mixer", "layers", "d_model", "d_state", "train_lengths", "steps",
                   "batch_size", "lr", "seed", "policy", "noise_std", "segments",
                   "reset_between_sequences")
WARMUP = 50


def lr_at(step: int, peak: float, total: int) -> float:
    """Linear warm-up over ``WARMUP`` steps, then a cosine to 0 over ``total`` steps."""
    return peak * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / total))


def task_loss(kind: str, outputs, targets, mask) -> torch.Tensor:
    """Masked mean loss: BCE (set), cross-entropy (class) or MSE (regression)."""
    if kind == "set":
        per = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").mean(-1)
    elif kind == "class":
        per = F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none")  # (B, L)
    else:
        per = ((outputs - targets) ** 2).mean(-1)
    return (per * mask).sum() / mask.sum().clamp_min(1)


def build_policy(cfg, model) -> StatePolicy:
    """``cfg.policy`` as a policy object; ConfigError (a ValueError) for an unknown name, and a
    ValueError for ``bptt:K`` with K > 1 (one optimiser step per segment: the gradient cannot
    flow through several)."""
    policy = make_policy(cfg.policy, model, noise_std=cfg.noise_std, seed=cfg.seed)
    if policy.bptt_segments > 1:
        raise ValueError(f"policy {cfg.policy!r}: the tagging trainer takes one optimiser step per "
                         "segment, so the gradient cannot flow through several (use previous)")
    return policy


def draw_episode(task, cfg, rng: np.random.Generator) -> list[tuple[torch.Tensor, ...]]:
    """One batch of fresh sequences of one training length, cut into ``cfg.segments`` pieces of
    (inputs, targets, mask) along time."""
    n = int(rng.choice(task.lengths(*cfg.train_lengths)))
    b = task.batch(cfg.batch_size, n, rng)
    pieces = np.array_split(np.arange(b.inputs.shape[1]), cfg.segments)
    return [tuple(torch.from_numpy(np.ascontiguousarray(a[:, p[0]:p[-1] + 1]))
                  for a in (b.inputs, b.targets, b.mask)) for p in pieces]


class TaskTrainer:
    """The state of one tagging run: model, policy, optimiser, generators, step and carry."""

    def __init__(self, task, model, cfg):
        self.task, self.model, self.cfg = task, model, cfg
        self.policy = build_policy(cfg, model)
        params = list(model.parameters()) + self.policy.parameters()
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        self.rng = np.random.default_rng(cfg.seed)
        self.step, self.piece, self.carried, self.losses = 0, 0, None, []
        self.episode_rng = self.rng.bit_generator.state
        self.episode: list | None = None

    def train_step(self) -> float:
        """One optimiser step on the next piece of the current episode (drawn when needed)."""
        cfg = self.cfg
        if self.piece == 0:
            self.episode_rng = self.rng.bit_generator.state
            self.episode = draw_episode(self.task, cfg, self.rng)
        elif self.episode is None:
            # resumed in the middle of an episode: redraw it from the generator's saved state
            self.rng.bit_generator.state = self.episode_rng
            self.episode = draw_episode(self.task, cfg, self.rng)
        inputs, targets, mask = self.episode[self.piece]
        fresh = self.piece == 0 and cfg.reset_between_sequences
        resets = torch.full((inputs.shape[0],), fresh)  # (B,)
        # zero: no initial state at all, the layers' own zero-state path (as before policies)
        init = (None if isinstance(self.policy, ZeroPolicy)
                else self.policy.initial_state(self.carried, resets, inputs.shape[0]))
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.lr, cfg.steps)
        outputs, final = self.model(inputs, init)  # (B, L, n_out)
        loss = task_loss(self.task.kind, outputs, targets, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.policy.observe(final)
        self.carried = detach_state(final)
        self.piece = (self.piece + 1) % cfg.segments
        self.step += 1
        self.losses.append(loss.item())
        return self.losses[-1]

    def checkpoint_dir(self) -> Path:
        return Path(self.cfg.run_dir) / "checkpoints" / f"{ckpt_io.CHECKPOINT_PREFIX}{self.step:08d}"

    def save(self) -> Path:
        """Write the checkpoint of the current step (see the module docstring)."""
        extra = dict(self.policy.state_tensors())
        extra["rng.torch"] = torch.get_rng_state()
        if self.carried is not None:
            extra.update(flatten_state(self.carried, prefix="carried"))
        rng = self.episode_rng if self.piece else self.rng.bit_generator.state
        meta = {"config": {"model": asdict(self.model.cfg), "task": asdict(self.cfg)},
                "step": self.step, "piece": self.piece, "numpy_rng": rng,
                "has_carried": self.carried is not None, "losses": self.losses}
        return ckpt_io.save_checkpoint(self.checkpoint_dir(), self.model, meta,
                                       optimizer=self.optimizer, extra=extra)

    def restore(self, path: Path) -> None:
        """Load a verified checkpoint of the same run (its training fields must match)."""
        meta = ckpt_io.verify_checkpoint(path, require=("optimizer",))
        saved = meta["config"].get("task", {})
        now = json_roundtrip(asdict(self.cfg))
        changed = [f for f in TRAINING_FIELDS if saved.get(f) != now[f]]
        if changed:
            raise ValueError(f"cannot resume from {path}: {', '.join(changed)} differ from the "
                             "run that wrote it")
        ckpt_io.load_weights(self.model, path)
        ckpt_io.optimizer_from_tensors(self.optimizer, ckpt_io.read_tensors(path, "optimizer"),
                                       meta["optimizer"])
        extra = ckpt_io.read_tensors(path, "extra", required=False)
        self.policy.load_state_tensors(extra)
        if meta.get("has_carried"):
            like = self.model.initial_state(self.cfg.batch_size)
            self.carried = unflatten_state(extra, like, prefix="carried")
        torch.set_rng_state(extra["rng.torch"])
        self.step, self.piece, self.losses = meta["step"], meta["piece"], list(meta["losses"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.episode_rng, self.episode = meta["numpy_rng"], None


def json_roundtrip(data: dict) -> dict:
    """``data`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(data))


def open_run_dir(trainer: TaskTrainer) -> None:
    """Resume from the latest checkpoint under ``run_dir`` (``resume``), or refuse to start over
    checkpoints already there (nothing on disk is overwritten)."""
    cfg = trainer.cfg
    found = ckpt_io.checkpoint_dirs(cfg.run_dir)
    if found and not cfg.resume:
        raise ValueError(f"{cfg.run_dir} already holds checkpoints; pass --resume to continue "
                         "it or choose another --run-dir")
    if cfg.resume:
        if not found:
            raise ValueError(f"--resume: no checkpoints under {cfg.run_dir}")
        trainer.restore(found[-1])


def train_model(task, model, cfg) -> dict:
    """Train in place (resuming from ``cfg.run_dir`` when asked); the loss history summary."""
    from tqdm.auto import tqdm

    trainer = TaskTrainer(task, model, cfg)
    if cfg.run_dir:
        open_run_dir(trainer)
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not cfg.progress, leave=False,
               desc=f"{task.name} {cfg.mixer} x{cfg.layers} {cfg.policy}")
    while trainer.step < cfg.steps:
        loss = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if cfg.run_dir and ((cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0)
                            or trainer.step == cfg.steps):
            try:
                trainer.save()
            except ckpt_io.NonFiniteCheckpointError:
                # a diverged run (e.g. an unstable parameterisation) keeps its last finite one
                pass
    bar.close()
    losses = trainer.losses
    tail = losses[-max(1, len(losses) // 10):]
    return {"final_loss": float(np.mean(tail)), "seconds": time.perf_counter() - start,
            "finite": bool(np.isfinite(tail).all()), "policy": trainer.policy.spec}
