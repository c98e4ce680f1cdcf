"""``ModelConfig``: the typed, validated description of an SSM language model.

Glossary (paper symbol -> field):
    D (model width)          d_model
    N (state size)           d_state
    E (expansion)            expand; d_inner = expand * d_model (Mamba, Mamba-2)
    conv kernel              d_conv (0 switches the short causal convolution off, as in LongSSM)
    λ = f(w) (StableSSM)     eigen_param (map from raw parameter to eigenvalue real part), eigen_param_b

``mixer`` is validated against the registry (``longssm.models.mixers.MIXERS``), the one list of
mixers; the registry does not import this module, so there is no import circle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from longssm.models.mixers import MIXERS
from longssm.reparam import EIGEN_PARAMS

NORMS = ("rmsnorm", "layernorm")


@dataclass
class ModelConfig:
    """Everything needed to build an ``SSMLanguageModel``; validated on construction."""

    mixer: str = "mamba"
    """Sequence mixer of every block: a name in the registry ``longssm.models.mixers.MIXERS``
    (s4d, s5, mamba, mamba2, longhorn, lru, ids4, bst, block-attention, gru, lstm; docs/models.md)."""
    d_model: int = 128
    """Residual stream width."""
    n_layers: int = 4
    """Number of residual blocks."""
    vocab_size: int = 257
    """Number of token ids (257 = 256 bytes + the document separator)."""
    d_state: int = 16
    """State size N per channel (Mamba, S4D), per head (Mamba-2) or in total (S5: P)."""
    expand: int = 2
    """Inner width factor for Mamba / Mamba-2: d_inner = expand * d_model."""
    d_conv: int = 4
    """Kernel of the short causal depthwise convolution (Mamba, Mamba-2); 0 = none."""
    mlp_ratio: int = 0
    """Hidden width of a gated MLP after each mixer as a multiple of d_model; 0 = no MLP."""
    norm: str = "rmsnorm"
    """Pre-norm type: rmsnorm or layernorm."""
    norm_eps: float = 1e-5
    """Epsilon of every norm."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head."""
    mixer_options: dict[str, Any] = field(default_factory=dict)
    """Family-specific options passed to the mixer (e.g. headdim for mamba2, init for s4d)."""
    eigen_param: str = "exp"
    """StableSSM map from a raw parameter w to the real part λ < 0 of the continuous eigenvalues
    of Mamba's A and S4D's / S5's Λ: direct (λ = min(w, -1e-4)), exp (-exp(w)), softplus
    (-log(1 + exp(w))) or best (-1/(w² + eigen_param_b)). Initial eigenvalues are the same for
    every map. Other mixers ignore it."""
    eigen_param_b: float = 0.5
    """Offset b of eigen_param=best; that map reaches only -1/b <= λ < 0."""

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {', '.join(MIXERS)}, got {self.mixer!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        for name in ("d_model", "n_layers", "vocab_size", "d_state", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("d_conv", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be a positive number, got {self.norm_eps!r}")
        if self.eigen_param not in EIGEN_PARAMS:
            raise ValueError(
                f"eigen_param must be one of {', '.join(EIGEN_PARAMS)}, got {self.eigen_param!r}"
            )
        b = self.eigen_param_b
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
            raise ValueError(f"eigen_param_b must be a positive number, got {b!r}")
        if not isinstance(self.mixer_options, dict):
            raise ValueError(
                f"mixer_options must be a mapping, got {type(self.mixer_options).__name__}"
            )

    @property
    def d_inner(self) -> int:
        """expand * d_model, or Mamba-2's ``mixer_options["d_inner"]`` (pruned heads)."""
        given = self.mixer_options.get("d_inner") if self.mixer == "mamba2" else None
        return self.expand * self.d_model if given is None else int(given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a mapping; unknown keys are an error naming the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**data)
