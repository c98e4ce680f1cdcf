"""Adapters on a trained SSM: the modules that *apply* a saved adapter (training lives in ``adapt/``).

They sit on the models floor so that every model source (``interop.pretrained.load_source``, hence
``longssm eval`` / ``generate``) can rebuild base + adapter; ``longssm.adapt`` imports them.

State tuning (Kang, Galim, Zeng et al. 2025). Each method wraps a trained mixer layer (``base``,
frozen) in an adapter module that runs the layer's own forward / step (its ``forward_offset`` /
``step_offset``, ``longssm.layers.base``) and adds one small trainable tensor, initialised to zero:

    initial-state    h_0 per layer: a sequence started without a state (``state=None``) starts from
                     h_0 instead of zeros; its effect C_t·Π_{k≤t} Ā_k·h_0 decays along t.
    state-offset-h   h′ per layer, added to the state read out at every step:
                     y_t = C_t·(h_t + h′) + D x_t = (scan output) + C_t·h′; the recurrence (and so
                     the carried state h_t) is unchanged.
    state-offset-y   y′ per layer: y_t = C_t·h_t + D x_t + y′.

Mamba (S6), per layer (glossary of ``longssm.layers.mamba``):
    h_0, h′   (d_inner, d_state)       y′   (d_inner,)
    out = out_proj((y + offset) ⊙ silu(z)), the offset inside the gate as in the paper.
S4D / S5 (time-invariant C, y_t = 2 Re(C h_t) + D u_t): h_0, h′ are complex (stored as real views
with a trailing (re, im) axis) of the state's shape without the batch; the offset (h) is then
2 Re(C h′), a constant: offset (h) ≡ offset (y) with y′ = 2 Re(C h′) (tested).

LoRA (Hu et al. 2021), ``lora:R[:ALPHA]``: every Mamba layer's in_proj, x_proj and out_proj become
W x + (α/R)·B·A x with A (R, in) ~ Kaiming-uniform, B (out, R) = 0 (so a fresh adapter is bitwise
the base model); α defaults to R.

Prefix tuning (Li & Liang 2021, the paper's prefix baseline), ``prefix:K``: every layer learns K
mixer inputs P_l (K, d_model), zero at the start (the prefix's activations at that layer, as in
Li & Liang's deep prefix; for an SSM the prefix acts only through the state it leaves). A sequence
started with ``state=None`` first runs the mixer over P_l and starts from the state that leaves:
h_start = mixer(P_l).state, a restricted initial-state tuning. Works for every registered mixer.

Full fine-tuning, ``full``: every parameter trains; the "adapter" is the whole weights file
(``model.<parameter or buffer name>``), and a loaded one replaces the base's weights.

A sequence given an explicit state (a carried one, or ``model.initial_state`` zeros) starts from
it: only ``state=None`` means "the adapter's start".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from longssm.layers.longhorn import Longhorn
from longssm.layers.mamba import Mamba
from longssm.layers.mamba2 import Mamba2
from longssm.layers.s4d import S4D
from longssm.layers.s5 import S5


class AdaptError(ValueError):
    """Bad input to adapting, pruning or token reduction: an unknown method, a ratio outside
    [0, 1), an adapter that does not fit the model, a corpus the model cannot read. The CLI prints
    its one-line message and exits with code 2. (Defined here, the lowest floor that raises it;
    ``longssm.adapt`` re-exports it.)"""


STATE_METHODS = ("initial-state", "state-offset-h", "state-offset-y")
"""The state-tuning methods (``longssm adapt --method``)."""

PARAM_OF = {"initial-state": "h0", "state-offset-h": "h_offset", "state-offset-y": "y_offset"}
"""The name of each method's one trainable tensor inside an adapter."""


class StateAdapter(nn.Module):
    """A frozen trained layer plus one zero-initialised tensor of a state-tuning method.

    Subclasses give the tensor shapes (``shapes``) and the readout offset (``_offset``: the term
    the layer adds to its SSM output, from its readout C). forward / step are the layer's own
    ``forward_offset`` / ``step_offset`` (the extension point of ``longssm.layers.base``): the
    learned start h_0 goes in through the ``state`` argument, the offset through ``offset``.
    """

    def __init__(self, base: nn.Module, method: str):
        super().__init__()
        if method not in STATE_METHODS:
            raise AdaptError(f"unknown state-tuning method {method!r}; expected one of "
                             f"{', '.join(STATE_METHODS)}")
        self.base = base
        self.method = method
        for p in base.parameters():
            p.requires_grad_(False)
        ref = next(base.parameters())
        shape = self.shapes()[PARAM_OF[method]]
        self.register_parameter(
            PARAM_OF[method], nn.Parameter(torch.zeros(shape, dtype=ref.dtype, device=ref.device))
        )

    @property
    def tensor(self) -> nn.Parameter:
        """The method's trainable tensor."""
        return getattr(self, PARAM_OF[self.method])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _offset(self, C: torch.Tensor) -> torch.Tensor:
        """The term added to the layer's SSM output, from its readout C (``layers.base``)."""
        raise NotImplementedError

    def initial_state(self, batch_size: int, device=None, dtype=None):
        """Zeros, as the base layer (the state protocol); ``state=None`` means the learned start."""
        return self.base.initial_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state=None):
        """As the base layer's ``forward`` (x (batch, T, d_model)), with the method applied."""
        return self.base.forward_offset(x, self._start(state, x), self._hook())

    def step(self, x_t: torch.Tensor, state):
        """As the base layer's ``step`` (x_t (batch, d_model)), with the method applied."""
        return self.base.step_offset(x_t, self._start(state, x_t), self._hook())

    def _hook(self):
        """The layer's ``offset`` argument: None for initial-state tuning, else ``_offset``."""
        return None if self.method == "initial-state" else self._offset

    def _start(self, state, x: torch.Tensor):
        """The state a call starts from: ``state`` if given (the layer validates it), else h_0
        for initial-state tuning, else None (zeros)."""
        if state is not None or self.method != "initial-state":
            return state
        zeros = self.base.initial_state(x.shape[0], x.device, x.dtype)
        h0 = self.h0
        if zeros.ssm.is_complex():
            h0 = torch.view_as_complex(h0.contiguous())
        return zeros._replace(ssm=h0.to(zeros.ssm.dtype).expand_as(zeros.ssm))


class MambaStateAdapter(StateAdapter):
    """State tuning of a ``Mamba`` layer: y = selective_scan(...) + C_t·h′ (or + y′)."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        b = self.base
        return {"h0": (b.d_inner, b.d_state), "h_offset": (b.d_inner, b.d_state),
                "y_offset": (b.d_inner,)}

    def _offset(self, C: torch.Tensor) -> torch.Tensor:
        """C_t·h′ (..., d_inner) from C (..., N), or y′ (d_inner,)."""
        if self.method == "state-offset-h":
            return torch.matmul(C, self.h_offset.to(C.dtype).T)  # (..., Di)
        return self.y_offset.to(C.dtype)


class Mamba2StateAdapter(StateAdapter):
    """State tuning of a ``Mamba2`` layer: h_0, h′ per head (nheads, headdim, d_state), y′ (d_inner,).

    y_t = h_t C_t + D x_t + h′ C_t (head h reads the C_t of its group), before the gated RMSNorm,
    as the offset of Mamba sits inside its gate.
    """

    def shapes(self) -> dict[str, tuple[int, ...]]:
        b = self.base
        return {"h0": (b.nheads, b.headdim, b.d_state), "h_offset": (b.nheads, b.headdim, b.d_state),
                "y_offset": (b.d_inner,)}

    def _offset(self, C: torch.Tensor) -> torch.Tensor:
        """h′ C_t (..., H, P) from C (..., G, N), or y′ (H, P)."""
        b = self.base
        if self.method == "state-offset-h":
            C = C.repeat_interleave(b.nheads // b.ngroups, dim=-2)  # (..., H, N)
            return torch.einsum("...hn,hpn->...hp", C, self.h_offset.to(C.dtype))
        return self.y_offset.to(C.dtype).view(b.nheads, b.headdim)


class LTIStateAdapter(StateAdapter):
    """State tuning of an ``S4D`` or ``S5`` layer (complex diagonal, time-invariant C)."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        b = self.base
        state = tuple(b.initial_state(1).ssm.shape[1:])  # (H, N/2) for S4D, (P/2,) for S5
        return {"h0": state + (2,), "h_offset": state + (2,), "y_offset": (b.d_model,)}

    def _offset(self, C: torch.Tensor) -> torch.Tensor:
        """The constant y′ (H,) from C (H, n) complex: 2 Re(C h′) for offset (h), y′ for offset (y)."""
        if self.method == "state-offset-h":
            h = torch.view_as_complex(self.h_offset.contiguous()).to(C.dtype)
            if isinstance(self.base, S4D):
                return 2 * (C * h).real.sum(-1)  # C (H, n), h′ (H, n) -> (H,)
            return 2 * (C @ h).real  # C̃ (H, n), h′ (n,) -> (H,)
        return self.y_offset


# Longhorn has Mamba's layout (state S_t (d_inner, N), readout q_t (N,) inside the same gate):
# y_t = S_t q_t + D x_t (+ h′ q_t), so Mamba's adapter applies unchanged.
ADAPTERS = {Mamba: MambaStateAdapter, Longhorn: MambaStateAdapter, Mamba2: Mamba2StateAdapter,
            S4D: LTIStateAdapter, S5: LTIStateAdapter}
"""Layer class -> its state adapter."""


def state_adapter(layer: nn.Module, method: str) -> StateAdapter:
    """Wrap a trained layer in the adapter of ``method``; AdaptError for an unsupported layer."""
    for cls, adapter in ADAPTERS.items():
        if type(layer) is cls:
            return adapter(layer, method)
    names = ", ".join(c.__name__ for c in ADAPTERS)
    raise AdaptError(f"state tuning supports {names} layers, not {type(layer).__name__}")


LORA_TARGETS = ("in_proj", "x_proj", "out_proj")
"""The linears that ``lora:R`` adapts (those a layer has: Mamba all three, Mamba-2 has no x_proj)."""

LORA_LAYERS = {Mamba: ("in_proj", "x_proj", "out_proj"), Longhorn: ("in_proj", "x_proj", "out_proj"),
               Mamba2: ("in_proj", "out_proj")}
"""Layer class -> the linears of it that ``lora:R`` adapts."""


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` W plus a low-rank update: y = W x (+ b) + (α/R)·B (A x).

    A (R, in) Kaiming-uniform, B (out, R) zeros: a fresh LoRA leaves the output bitwise unchanged.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, alpha
        self.scale = alpha / rank
        self.in_features, self.out_features = base.in_features, base.out_features
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)


class PrefixAdapter(nn.Module):
    """A frozen trained mixer plus K learned inputs P (K, d_model) it reads before a fresh sequence.

    ``forward(x, None)`` runs the mixer over P (broadcast over the batch) and then over x from the
    state P left; an explicit state is used as given (the prefix only replaces the zero start).
    """

    def __init__(self, base: nn.Module, length: int):
        super().__init__()
        self.base, self.length = base, length
        for p in base.parameters():
            p.requires_grad_(False)
        ref = next(base.parameters())
        self.prefix = nn.Parameter(torch.zeros(length, base.d_model, dtype=ref.dtype,
                                               device=ref.device))
        self.d_model = base.d_model

    def initial_state(self, batch_size: int, device=None, dtype=None):
        """Zeros, as the base layer (the state protocol); ``state=None`` means the prefix's state."""
        return self.base.initial_state(batch_size, device=device, dtype=dtype)

    def prefix_state(self, batch: int, x: torch.Tensor):
        """The state the mixer holds after reading P, for ``batch`` rows."""
        prefix = self.prefix.to(x.dtype).expand(batch, -1, -1)  # (B, K, d_model)
        return self.base(prefix)[1]

    def forward(self, x: torch.Tensor, state=None):
        """x (batch, T, d_model) -> (y, state), from the prefix's state when ``state`` is None."""
        if state is None:
            state = self.prefix_state(x.shape[0], x)
        return self.base(x, state)

    def step(self, x_t: torch.Tensor, state):
        """One token (batch, d_model), from the prefix's state when ``state`` is None."""
        if state is None:
            state = self.prefix_state(x_t.shape[0], x_t)
        return self.base.step(x_t, state)


def prefix_spec(method: str) -> int | None:
    """K of ``prefix:K``; None for another method; AdaptError when K is not an integer >= 1."""
    if not method.startswith("prefix:"):
        return None
    try:
        length = int(method.split(":", 1)[1])
    except ValueError:
        raise AdaptError(f"bad prefix method {method!r}: expected prefix:K") from None
    if length < 1:
        raise AdaptError(f"prefix tuning needs K >= 1, got {method!r}")
    return length


def lora_spec(method: str) -> tuple[int, float] | None:
    """(R, α) of ``lora:R[:ALPHA]`` (α defaults to R); None for another method; AdaptError when
    the numbers are bad."""
    if not method.startswith("lora:"):
        return None
    parts = method.split(":")[1:]
    try:
        rank = int(parts[0])
        alpha = float(parts[1]) if len(parts) == 2 else float(rank)
        if len(parts) > 2:
            raise ValueError
    except (ValueError, IndexError):
        raise AdaptError(f"bad LoRA method {method!r}: expected lora:R or lora:R:ALPHA") from None
    if rank < 1 or not alpha > 0:
        raise AdaptError(f"LoRA needs R >= 1 and ALPHA > 0, got {method!r}")
    return rank, alpha


FULL = "full"
"""Full fine-tuning: every parameter trains (the adapter is the whole weights file)."""


def check_method(method: str) -> str:
    """``method`` if it is a known adaptation method, else AdaptError."""
    if (method not in STATE_METHODS and method != FULL and lora_spec(method) is None
            and prefix_spec(method) is None):
        raise AdaptError(f"unknown adaptation method {method!r}; expected one of "
                         f"{', '.join(STATE_METHODS)}, prefix:K, lora:R[:ALPHA] or full")
    return method


def _is_adapted(mixer: nn.Module) -> bool:
    return isinstance(mixer, (StateAdapter, PrefixAdapter)) or any(
        isinstance(getattr(mixer, name, None), LoRALinear) for name in LORA_TARGETS)


def _attach_lora(mixer: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    if type(mixer) not in LORA_LAYERS:
        raise AdaptError(f"LoRA supports Mamba, Longhorn and Mamba-2 layers, not {type(mixer).__name__}")
    params = []
    for name in LORA_LAYERS[type(mixer)]:
        wrapped = LoRALinear(getattr(mixer, name), rank, alpha)
        setattr(mixer, name, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def attach(model: nn.Module, method: str) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` and add the adapter of ``method`` to each block (in
    place): wrap the mixer (state tuning) or its linears (LoRA). Returns the trainable tensors."""
    check_method(method)
    lora, prefix = lora_spec(method), prefix_spec(method)
    if getattr(model, "adapter_method", None) is not None or any(
            _is_adapted(block.mixer) for block in model.blocks):
        raise AdaptError("this model already carries an adapter")
    model.adapter_method = method
    for p in model.parameters():
        p.requires_grad_(method == FULL)
    if method == FULL:
        return list(model.parameters())
    params = []
    for block in model.blocks:
        if lora is not None:
            params += _attach_lora(block.mixer, *lora)
        elif prefix is not None:
            block.mixer = PrefixAdapter(block.mixer, prefix)
            params.append(block.mixer.prefix)
        else:
            block.mixer = state_adapter(block.mixer, method)
            params.append(block.mixer.tensor)
    return params


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of an adapted model: ``blocks.{i}.{h0|h_offset|y_offset}`` or
    ``blocks.{i}.{in_proj|x_proj|out_proj}.lora_{A|B}`` or ``blocks.{i}.prefix`` -> tensor; for
    full fine-tuning ``model.<name>`` of every parameter (tied ones once) and buffer."""
    if getattr(model, "adapter_method", None) == FULL:
        named = [*model.named_parameters(), *model.named_buffers()]
        return {f"model.{name}": t for name, t in named}
    out = {}
    for i, block in enumerate(model.blocks):
        if isinstance(block.mixer, StateAdapter):
            out[f"blocks.{i}.{PARAM_OF[block.mixer.method]}"] = block.mixer.tensor
        if isinstance(block.mixer, PrefixAdapter):
            out[f"blocks.{i}.prefix"] = block.mixer.prefix
        for name in LORA_TARGETS:
            layer = getattr(block.mixer, name, None)
            if isinstance(layer, LoRALinear):
                out[f"blocks.{i}.{name}.lora_A"] = layer.lora_A
                out[f"blocks.{i}.{name}.lora_B"] = layer.lora_B
    return out


def apply_adapter(model: nn.Module, method: str, tensors: dict[str, torch.Tensor]) -> None:
    """Attach the adapter ``method`` to ``model`` and load ``tensors`` into it (frozen).

    AdaptError when the tensors do not fit the model (names or shapes).
    """
    attach(model, method)
    own = adapter_tensors(model)
    if set(own) != set(tensors):
        raise AdaptError(f"adapter does not fit this model: it holds {sorted(tensors)[:3]}, the "
                         f"model needs {sorted(own)[:3]} ({len(model.blocks)} layers)")
    for name, param in own.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise AdaptError(f"adapter tensor {name} has shape {tuple(tensors[name].shape)}, "
                             f"the model expects {tuple(param.shape)}")
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(tensors[name])
    for param in own.values():
        param.requires_grad_(False)


def is_mergeable(method: str) -> bool:
    """True for the methods whose adapted model is a plain model of the base architecture:
    ``lora:R[:ALPHA]`` (W + (α/R)·B·A) and ``full`` (the adapter's weights are the model)."""
    return method == FULL or lora_spec(method) is not None


def check_mergeable(method: str, where) -> None:
    """AdaptError (one line) when ``method`` is not expressible as the base architecture's weights."""
    if is_mergeable(method):
        return
    raise AdaptError(
        f"{where} is adapted with {method}, which acts on the hidden state and is not expressible "
        "as the base architecture's weights, so it cannot start train/extend (only lora:R and "
        f"full merge); use `longssm eval {where}` / `longssm generate {where}`, or --init-from "
        "its base run")


def merged_linear(layer: LoRALinear) -> nn.Linear:
    """The plain ``nn.Linear`` equal to a LoRA linear: W′ = W + (α/R)·B·A (bias kept).

    The sum is formed in float64 and rounded once to W's dtype, so in float64 W′ x equals
    W x + (α/R)·B (A x) up to the reassociation of the product.
    """
    base = layer.base
    w = base.weight
    delta = layer.lora_B.detach().double() @ layer.lora_A.detach().double()  # (out, R) @ (R, in)
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                       device=w.device, dtype=w.dtype)
    with torch.no_grad():
        merged.weight.copy_((w.detach().double() + layer.scale * delta).to(w.dtype))  # (out, in)
        if base.bias is not None:
            merged.bias.copy_(base.bias.detach())
    return merged


def merge_adapter(model: nn.Module) -> nn.Module:
    """Turn an adapted model (``attach`` / ``apply_adapter``) into the plain model it equals, in
    place: every ``LoRALinear`` becomes its merged ``nn.Linear`` (``merged_linear``); a ``full``
    model is already plain. Every parameter is trainable afterwards and ``adapter_method`` is
    cleared, so ``model.state_dict()`` has the base architecture's names and shapes. AdaptError for
    the state methods and prefix tuning (``check_mergeable``). Returns ``model``."""
    method = getattr(model, "adapter_method", None)
    if method is None:
        raise AdaptError("this model carries no adapter to merge")
    check_mergeable(method, "this model")
    for block in model.blocks:
        for name in LORA_TARGETS:
            layer = getattr(block.mixer, name, None)
            if isinstance(layer, LoRALinear):
                setattr(block.mixer, name, merged_linear(layer))
    model.adapter_method = None
    for p in model.parameters():
        p.requires_grad_(True)
    return model
