"""Longhorn: S_t = (1 - ε_t k_t²) ⊙ S_{t-1} + ε_t x_t k_tᵀ, y_t = S_t q_t + D x_t, ε_t = β_t/(1+β_t||k_t||²).

Forms, one signature ``(x, beta, k, q, D=None, initial_state=None, output_final_state=False)``:
``longhorn_naive`` (the reference loop), ``longhorn_chunk`` (the training form, also exported as
``longhorn``) and ``longhorn_step`` (one step). Derivation in README.md.
"""

from longssm.ops.longhorn.chunk import DEFAULT_CHUNK_SIZE, longhorn_chunk, longhorn_log_decay
from longssm.ops.longhorn.naive import longhorn_eps, longhorn_naive
from longssm.ops.longhorn.step import longhorn_step

longhorn = longhorn_chunk

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "longhorn",
    "longhorn_chunk",
    "longhorn_eps",
    "longhorn_log_decay",
    "longhorn_naive",
    "longhorn_step",
]
