"""Looking inside trained SSMs: hidden attention, attention rollout, gradient-weighted attribution
and state reliance (see docs/analysis.md).

Example:
    from longssm.analysis import hidden_attention, state_reliance
    maps = hidden_attention(model, tokens, layer=0, kind="block")   # maps["mean"] (b, T, T)
    state_reliance(model, tokens, state)["ratio"]                  # (n_layers, b, T)
"""

from longssm.analysis.attention import (
    aggregate,
    attention_rollout,
    attribution,
    hidden_attention,
    layer_operators,
    minmax,
    rollout,
)
from longssm.analysis.layers import KINDS, LayerOperator, layer_operator
from longssm.analysis.operators import (
    longhorn_attention,
    lti_attention,
    lti_kernel,
    selective_attention,
    ssd_attention,
)
from longssm.analysis.reliance import state_reliance

__all__ = [
    "KINDS",
    "LayerOperator",
    "aggregate",
    "attention_rollout",
    "attribution",
    "hidden_attention",
    "layer_operator",
    "layer_operators",
    "longhorn_attention",
    "lti_attention",
    "lti_kernel",
    "minmax",
    "rollout",
    "selective_attention",
    "ssd_attention",
    "state_reliance",
]
