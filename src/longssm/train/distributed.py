"""Policies under torchrun: one rank's view of a state-initialisation policy.

Policies whose rows depend on the whole batch (``passing``, ``p-reset``, the noises) or that fit
statistics (``fitted-noise``) see the global batch through ``ShardedPolicy``, which gathers what
their flags say they need, so every policy matches the single-process run. Process groups, stream ownership and devices are
``longssm.dist``.
"""

from __future__ import annotations

import torch

from longssm.dist import DistContext
from longssm.models.state import ModelState, detach_state, select_rows
from longssm.policies import StatePolicy


class ShardedPolicy:
    """One rank's view of a state policy: the initial states of its own rows of the global batch.

    It reads only the policy's flags (``longssm.policies.StatePolicy``): a ``row_local``
    policy (zero, previous, bptt:K) runs on the rank's rows directly. Any other builds the global
    batch's states, identical on every rank, from the resets of all ranks and, if it
    ``reads_carry`` (passing, p-reset), their carried states, gathered every segment; the rank keeps
    its rows. A policy that ``observes`` (fitted-noise) sees the gathered final states, so its
    statistics are those of the global batch. The result equals the single-process policy row for
    row.

    Args:
        policy: the single-process ``StatePolicy``.
        ctx: this rank's ``DistContext``.
        batch_size: the global B.
    """

    def __init__(self, policy: StatePolicy, ctx: DistContext, batch_size: int):
        self.policy = policy
        self.ctx = ctx
        self.batch_size = batch_size
        self.spec = policy.spec
        self.bptt_segments = policy.bptt_segments
        self.rows = torch.tensor(ctx.owned_streams(batch_size))  # (B/N,)

    def initial_state(self, carried, resets: torch.Tensor, batch_size: int) -> ModelState:
        """Args: this rank's carried state (B/N rows) or None, its resets (B/N,), B/N."""
        if self.policy.row_local:
            return self.policy.initial_state(carried, resets, batch_size)
        full_resets = self.ctx.gather_rows(resets)  # (B,)
        full = None
        if carried is not None and self.policy.reads_carry:
            full = self.ctx.gather_state(carried)
        state = self.policy.initial_state(full, full_resets, self.batch_size)
        return select_rows(state, self.rows)

    def observe(self, final_state: ModelState) -> None:
        if not self.policy.observes:
            return
        self.policy.observe(self.ctx.gather_state(detach_state(final_state)))

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.policy.parameters()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.policy.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_tensors(tensors)
