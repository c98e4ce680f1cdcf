"""Selective scan (Mamba-1 / S6): h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t, y_t = C_t·h_t + D x_t.

Forms, one signature ``(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False)``:
``selective_scan_naive`` (the reference loop), ``selective_scan_chunk`` (the training form, also
exported as ``selective_scan``) and ``selective_scan_step`` (one step). Derivation in README.md.
"""

from longssm.ops.selective_scan.chunk import DEFAULT_CHUNK_SIZE, selective_scan_chunk
from longssm.ops.selective_scan.naive import selective_scan_naive
from longssm.ops.selective_scan.step import selective_scan_step

selective_scan = selective_scan_chunk

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "selective_scan",
    "selective_scan_chunk",
    "selective_scan_naive",
    "selective_scan_step",
]
