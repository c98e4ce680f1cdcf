"""State-initialisation policies: what state each training segment starts from.

A room of its own on the floor of ``dist`` (below ``train`` and ``tasks``), so that the language-model
loop (``longssm.train``) and the tagging trainer (``longssm.tasks.trainer``) share these classes;
``longssm.train.policies`` re-exports them.

The trainer keeps ``carried``, the final state of the previous segment of every stream (row), and
asks the policy for the next segment's initial state:

    init = policy.initial_state(carried, resets, B)  # resets: (B,) rows that must start afresh
    logits, final = model(inputs, init)
    policy.observe(final)                             # policies that fit statistics
    carried = final                                   # the loop detaches it (truncated BPTT)

Policies (``TrainConfig.policy``; the names and their arguments are ``longssm.config.POLICY_GRAMMAR``):
    zero          zeros for every segment (the baseline that fails to extend)
    previous      the previous segment's final state of the same row (LongSSM)
    bptt:K        like previous, but the gradient flows through K consecutive segments
    passing       the final state of another row (an unrelated sequence), rows rolled by a random shift
    noise         i.i.d. N(0, noise_std²) (complex states: real and imaginary parts each N(0, σ²/2))
    fitted-noise  N(mean, std²) with per-layer, per-element running statistics of observed final states
    learned       a trainable initial state per layer, shared by all rows
    p-reset:P     previous, but each row is reset to zeros with probability P at every segment
Short-convolution buffers (state fields named ``conv``) hold raw past inputs, not SSM state, and
``pos`` fields count tokens in an attention block: the noise and learned policies leave them at zero.

Each class declares the name it implements and three flags (``row_local``, ``reads_carry``,
``observes``) that tell ``longssm.train.distributed.ShardedPolicy`` what a rank must gather; a new
policy is one class here, one line in ``POLICY_CLASSES`` and one entry in ``POLICY_GRAMMAR``.
"""

from __future__ import annotations

import torch
from torch import nn

from longssm.config import POLICY_GRAMMAR, parse_policy
from longssm.models.state import ModelState, map_state

# Fields that hold raw input history or bookkeeping rather than an SSM hidden state ("pos": the
# position inside the current attention block, which every row of a batch must share).
INPUT_HISTORY_FIELDS = ("conv", "pos")


def _zero_rows(state: ModelState, resets: torch.Tensor | None) -> ModelState:
    """Zero the rows of ``state`` where ``resets`` (B,) is True."""
    if resets is None or not bool(resets.any()):
        return state

    def zero(t):
        keep = (~resets).to(t.device).view(-1, *([1] * (t.dim() - 1)))
        return t * keep.to(t.dtype)

    return map_state(state, zero)


class StatePolicy:
    """Base of the policies: the flags, zeros, checkpointed generator state. Not a policy itself.

    A subclass sets ``name`` (and ``argument`` if its name takes one), its three flags and
    ``initial_state``; it may override ``observe`` (then ``observes = True``), ``parameters`` and
    the ``state_tensors`` pair. The base's flags are the cautious ones: the rank gathers every
    row's carried state and reset and keeps its own rows of the global result.
    """

    name: str | None = None
    """The policy's name in ``longssm.config.POLICY_GRAMMAR``."""
    argument: str | None = None
    """The letter of its argument (K in ``bptt:K``), None if the name takes none."""
    row_local = False
    """A row's initial state depends only on that row's carried state and reset (and on nothing
    drawn for other rows): called on any subset of rows, the policy returns those rows of the
    whole batch's states, so a rank may call it on its own rows alone."""
    reads_carry = True
    """``initial_state`` reads the carried state at all (False: it may be passed None)."""
    observes = False
    """``observe`` fits statistics from final states (False: it does nothing)."""
    bptt_segments = 1
    """Consecutive segments the gradient flows through (the loop detaches between groups)."""

    def __init__(self, model, generator: torch.Generator | None = None):
        self.model = model
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    @classmethod
    def from_spec(cls, model, value, noise_std: float, generator: torch.Generator) -> StatePolicy:
        """Build from the parsed argument ``value`` of the spec (None when the name takes none)."""
        return cls(model, generator=generator)

    @property
    def spec(self) -> str:
        """The ``TrainConfig.policy`` string of this policy."""
        return self.name

    def zeros(self, batch_size: int) -> ModelState:
        return self.model.initial_state(batch_size)

    def initial_state(self, carried: ModelState | None, resets: torch.Tensor, batch_size: int):
        """The initial state of the next segment. Args: carried state or None; resets (B,) bool."""
        raise NotImplementedError

    def observe(self, final_state: ModelState) -> None:
        """See the final state of a segment (for policies that fit statistics)."""

    def parameters(self) -> list[nn.Parameter]:
        """Trainable tensors the optimiser must update (learned policy)."""
        return []

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (statistics, learned states, generator state)."""
        return {"policy.generator": self.generator.get_state()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "policy.generator" in tensors:
            self.generator.set_state(tensors["policy.generator"])


class ZeroPolicy(StatePolicy):
    """Zeros for every segment."""

    name = "zero"
    row_local = True
    reads_carry = False

    def initial_state(self, carried, resets, batch_size):
        return self.zeros(batch_size)


class PreviousPolicy(StatePolicy):
    """Carry the previous segment's final state of the same row (zeros at resets)."""

    name = "previous"
    row_local = True
    reads_carry = True

    def initial_state(self, carried, resets, batch_size):
        if carried is None:
            return self.zeros(batch_size)
        return _zero_rows(carried, resets)


class BPTTPolicy(PreviousPolicy):
    """``previous`` with the graph kept through ``k`` consecutive segments."""

    name = "bptt"
    argument = "K"

    def __init__(self, model, k: int, generator=None):
        super().__init__(model, generator)
        self.bptt_segments = k

    @classmethod
    def from_spec(cls, model, value, noise_std, generator):
        return cls(model, value, generator=generator)

    @property
    def spec(self):
        return f"bptt:{self.bptt_segments}"


class PResetPolicy(PreviousPolicy):
    """``previous`` with each row reset to zeros with probability ``p`` at every segment."""

    name = "p-reset"
    argument = "P"
    # one generator draws the coins of all rows: row i gets the i-th draw of the whole batch
    row_local = False
    reads_carry = True

    def __init__(self, model, p: float, generator=None):
        super().__init__(model, generator)
        self.p = p

    @classmethod
    def from_spec(cls, model, value, noise_std, generator):
        return cls(model, value, generator=generator)

    @property
    def spec(self):
        return f"p-reset:{self.p}"

    def initial_state(self, carried, resets, batch_size):
        coin = torch.rand(batch_size, generator=self.generator) < self.p  # (B,)
        return super().initial_state(carried, resets | coin, batch_size)


class PassingPolicy(StatePolicy):
    """The final state of another row: rows rolled by a random shift in [1, B-1]."""

    name = "passing"
    row_local = False
    reads_carry = True

    def initial_state(self, carried, resets, batch_size):
        if carried is None:
            return self.zeros(batch_size)
        if batch_size < 2:
            raise ValueError("policy 'passing' needs batch_size >= 2 (a state from another row)")
        shift = int(torch.randint(1, batch_size, (1,), generator=self.generator))
        rolled = map_state(carried, lambda t: torch.roll(t, shifts=shift, dims=0))
        return _zero_rows(rolled, resets)


def _sample_like(template: torch.Tensor, mean, std, generator) -> torch.Tensor:
    """Gaussian tensor shaped like ``template``; complex tensors get σ²/2 per component."""
    if template.is_complex():
        real = torch.randn(template.shape + (2,), generator=generator, dtype=template.real.dtype)
        noise = torch.view_as_complex(real) * (0.5**0.5)
    else:
        noise = torch.randn(template.shape, generator=generator, dtype=template.dtype)
    return (mean + std * noise.to(template.device)).to(template.dtype)


class NoisePolicy(StatePolicy):
    """i.i.d. Gaussian initial states with standard deviation ``std``."""

    name = "noise"
    row_local = False
    reads_carry = False

    def __init__(self, model, std: float, generator=None):
        super().__init__(model, generator)
        self.std = std

    @classmethod
    def from_spec(cls, model, value, noise_std, generator):
        return cls(model, noise_std, generator=generator)

    def initial_state(self, carried, resets, batch_size):
        zeros = self.zeros(batch_size)
        return tuple(
            type(layer)(
                *(
                    t
                    if f in INPUT_HISTORY_FIELDS
                    else _sample_like(t, 0.0, self.std, self.generator)
                    for f, t in zip(layer._fields, layer)
                )
            )
            for layer in zeros
        )


class FittedNoisePolicy(StatePolicy):
    """Gaussian initial states with running per-layer, per-element mean and std of final states.

    Statistics are exponential moving averages (``momentum``) of the batch mean and of the batch
    mean square; until the first observation the policy returns zeros.
    """

    name = "fitted-noise"
    row_local = False
    reads_carry = False
    observes = True

    def __init__(self, model, momentum: float = 0.05, generator=None):
        super().__init__(model, generator)
        self.momentum = momentum
        self.mean: dict[str, torch.Tensor] = {}
        self.sq: dict[str, torch.Tensor] = {}

    @staticmethod
    def _key(i: int, field: str) -> str:
        return f"{i}.{field}"

    def observe(self, final_state):
        for i, layer in enumerate(final_state):
            for field, t in zip(layer._fields, layer):
                if field in INPUT_HISTORY_FIELDS or not t.numel():
                    continue
                t = t.detach()
                m = t.mean(0)
                s = (t.abs() ** 2).mean(0)
                key = self._key(i, field)
                if key not in self.mean:
                    self.mean[key], self.sq[key] = m.clone(), s.clone()
                else:
                    self.mean[key].lerp_(m, self.momentum)
                    self.sq[key].lerp_(s, self.momentum)

    def initial_state(self, carried, resets, batch_size):
        zeros = self.zeros(batch_size)
        out = []
        for i, layer in enumerate(zeros):
            fields = []
            for field, t in zip(layer._fields, layer):
                key = self._key(i, field)
                if field in INPUT_HISTORY_FIELDS or key not in self.mean:
                    fields.append(t)
                    continue
                mean = self.mean[key]
                std = (self.sq[key] - mean.abs() ** 2).clamp_min(0).sqrt()
                fields.append(_sample_like(t, mean, std, self.generator))
            out.append(type(layer)(*fields))
        return tuple(out)

    def state_tensors(self):
        tensors = super().state_tensors()
        for key in self.mean:
            for name, store in (("mean", self.mean), ("sq", self.sq)):
                t = store[key]
                tensors[f"policy.{name}.{key}"] = torch.view_as_real(t) if t.is_complex() else t
        return tensors

    def load_state_tensors(self, tensors):
        super().load_state_tensors(tensors)
        zeros = self.zeros(1)
        for i, layer in enumerate(zeros):
            for field, t in zip(layer._fields, layer):
                key = self._key(i, field)
                for name, store in (("mean", self.mean), ("sq", self.sq)):
                    saved = tensors.get(f"policy.{name}.{key}")
                    if saved is None:
                        continue
                    if name == "mean" and t.is_complex():
                        saved = torch.view_as_complex(saved.contiguous())
                    store[key] = saved.to(t.device).clone()


class LearnedPolicy(StatePolicy):
    """A trainable initial state per layer (shared across rows), zeros at initialisation."""

    name = "learned"
    # row_local would hold too (every row gets the same tensor); False keeps the distributed
    # gradient on the path it always took (the rank's rows cut from the whole batch's state)
    row_local = False
    reads_carry = False

    def __init__(self, model, generator=None):
        super().__init__(model, generator)
        self.learned: dict[str, nn.Parameter] = {}
        for i, layer in enumerate(self.zeros(1)):
            for field, t in zip(layer._fields, layer):
                if field in INPUT_HISTORY_FIELDS or not t.numel():
                    continue
                real = torch.view_as_real(t[0]) if t.is_complex() else t[0]
                self.learned[f"{i}.{field}"] = nn.Parameter(torch.zeros_like(real))

    def parameters(self):
        return list(self.learned.values())

    def initial_state(self, carried, resets, batch_size):
        zeros = self.zeros(batch_size)
        out = []
        for i, layer in enumerate(zeros):
            fields = []
            for field, t in zip(layer._fields, layer):
                p = self.learned.get(f"{i}.{field}")
                if p is None:
                    fields.append(t)
                    continue
                value = torch.view_as_complex(p) if t.is_complex() else p
                fields.append(value.unsqueeze(0).expand_as(t))
            out.append(type(layer)(*fields))
        return tuple(out)

    def state_tensors(self):
        tensors = super().state_tensors()
        tensors.update({f"policy.learned.{k}": p.detach() for k, p in self.learned.items()})
        return tensors

    def load_state_tensors(self, tensors):
        super().load_state_tensors(tensors)
        with torch.no_grad():
            for key, p in self.learned.items():
                saved = tensors.get(f"policy.learned.{key}")
                if saved is not None:
                    p.copy_(saved)


POLICY_CLASSES: dict[str, type[StatePolicy]] = {
    cls.name: cls
    for cls in (
        ZeroPolicy,
        PreviousPolicy,
        BPTTPolicy,
        PassingPolicy,
        NoisePolicy,
        FittedNoisePolicy,
        LearnedPolicy,
        PResetPolicy,
    )
}
"""The class of every name in ``longssm.config.POLICY_GRAMMAR``."""


def _check_against_grammar() -> None:
    """Refuse to import when the classes and ``POLICY_GRAMMAR`` name different policies."""
    declared = {name: cls.argument for name, cls in POLICY_CLASSES.items()}
    grammar = {name: arg and arg.letter for name, arg in POLICY_GRAMMAR.items()}
    if declared != grammar:
        raise ImportError(
            f"policy classes {declared} disagree with longssm.config.POLICY_GRAMMAR {grammar}"
        )


_check_against_grammar()


def make_policy(spec: str, model, noise_std: float = 1.0, seed: int = 0) -> StatePolicy:
    """Build the policy named by ``TrainConfig.policy``.

    Raises ConfigError (a ValueError; one line listing the valid policies) for an unknown spec.
    """
    name, value = parse_policy(spec)
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    return POLICY_CLASSES[name].from_spec(model, value, noise_std, generator)
