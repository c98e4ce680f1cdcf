"""Processes and devices: torchrun's process group, which rank owns which stream, device names.

The bottom of the training and evaluation floors (``train/`` and ``eval/`` import it; it imports
neither). ``init_distributed`` reads torchrun's environment and joins the process group (gloo on
CPU, nccl on CUDA); ``DistContext`` holds this process's place in the job, and every one of its
methods is a no-op or identity in a single process. The global batch is the single-process batch:
rank r owns streams r, r+N, r+2N, ... of the batchify layout of ``ContiguousStreams``. See
docs/distributed.md.

Glossary (code name -> meaning):
    world_size   N, processes in the job (torchrun's WORLD_SIZE)
    rank         r in [0, N) (RANK); LOCAL_RANK picks the GPU on a node
    batch_size   B, the global number of streams; B % N == 0
    owned rows   ``owned_streams(r, N, B)`` = [r, r+N, ...]: local row j is global stream r + j*N
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longssm.config import ConfigError
from longssm.models.state import ModelState, map_state, select_rows

# Minutes a rank waits in a collective (e.g. at the barrier while rank 0 validates) before failing.
TIMEOUT_ENV = "LONGSSM_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 30


def resolve_device(name: str, option: str = "device") -> torch.device:
    """The torch device for ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available).

    Raises ConfigError (one line naming ``option``) for any other name, or for CUDA without a
    CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:[0-9]+)?", str(name)):
        raise ConfigError(f"{option} must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{option} is {name!r} but no CUDA device is available")
    return torch.device(name)


def owned_streams(rank: int, world_size: int, batch_size: int) -> list[int]:
    """The global streams of ``rank``: r, r+N, r+2N, ... (B/N of them).

    Raises ConfigError (one line) when B is not divisible by N.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"the global batch size B={batch_size} is not divisible by the number of processes "
            f"N={world_size}; choose data.batch_size (or tokens_per_step // seq_len) as a "
            f"multiple of {world_size}"
        )
    return list(range(rank, batch_size, world_size))


@dataclass
class DistContext:
    """This process's place in the job; every method is a no-op or identity with one process.

    Attributes:
        rank: r. world_size: N. local_rank: index on this node.
        device: the device this rank trains on.
        owns_group: True when ``init_distributed`` created the process group (``close`` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owned_streams(self, batch_size: int) -> list[int]:
        return owned_streams(self.rank, self.world_size, batch_size)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean over ranks of a float (the global loss from per-rank losses of equal rows)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def max(self, values: Sequence[float]) -> list[float]:
        """The element-wise maximum over ranks of a list of floats."""
        if not self.enabled or not values:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of every rank in global stream order: (B/N, ...) per rank -> (B, ...)."""
        if not self.enabled:
            return t
        source = t.detach()
        complex_ = source.is_complex()
        if complex_:
            source = torch.view_as_real(source)
        as_bool = source.dtype == torch.bool
        if as_bool:
            source = source.to(torch.uint8)
        source = source.to(self.device).contiguous()
        parts = [torch.empty_like(source) for _ in range(self.world_size)]
        dist.all_gather(parts, source)
        # local row j of rank r is stream j*N + r: interleave the ranks' rows
        full = torch.stack(parts, dim=1).flatten(0, 1)  # (B, ...)
        if as_bool:
            full = full.bool()
        if complex_:
            full = torch.view_as_complex(full)
        return full.to(t.device)

    def gather_state(self, state: ModelState) -> ModelState:
        """The carried states of every rank in global stream order (detached)."""
        return map_state(state, self.gather_rows) if self.enabled else state

    def shard_state(self, state: ModelState, batch_size: int) -> ModelState:
        """This rank's rows of a global state (B, ...) -> (B/N, ...)."""
        if not self.enabled:
            return state
        return select_rows(state, torch.tensor(self.owned_streams(batch_size)))

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """All-reduce the gradients of parameters DDP does not see (a learned initial state)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    def close(self, sync: bool = True) -> None:
        """Leave the process group if this context created it.

        With ``sync`` (the normal end of a job) every rank first meets at a barrier, so no rank
        tears gloo down while a peer's last collective is still in flight (a rank exiting early
        can abort with "terminate called without an active exception"). After an error, pass
        ``sync=False``: the other ranks may never arrive.
        """
        if self.owns_group and dist.is_initialized():
            if sync:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def env_world() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from torchrun's environment; (0, 1, 0) without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment, or describe a single process.

    Args:
        device: ``cpu``, ``cuda`` or ``auto`` (``TrainConfig.device``). Under torchrun CUDA ranks
            use ``cuda:LOCAL_RANK`` and the nccl backend; CPU ranks use gloo.

    Returns:
        A ``DistContext``; ``world_size == 1`` (and no process group) without torchrun.
    """
    resolved = resolve_device(device)
    rank, world_size, local_rank = env_world()
    if world_size == 1:
        return DistContext(device=resolved)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    owns = not dist.is_initialized()
    if owns:
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group(
            backend="nccl" if resolved.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=minutes),
            device_id=resolved if resolved.type == "cuda" else None,
        )
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(
            f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
            f"the environment (RANK={rank}, WORLD_SIZE={world_size})"
        )
    return DistContext(rank, world_size, local_rank, resolved, owns)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` under torchrun; the model itself otherwise."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def assign_plans(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Split work items over ranks, largest first onto the least-loaded rank (deterministic).

    Args:
        costs: the cost of each item (tokens processed by an evaluation plan).
        world_size: N.

    Returns:
        N sorted lists of item indices; together they hold every index once.
    """
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        loads[r] += costs[i]
        shares[r].append(i)
    return [sorted(s) for s in shares]
