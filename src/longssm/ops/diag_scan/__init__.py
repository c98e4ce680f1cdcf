"""diag_scan: the complex diagonal time-invariant recurrence of S4D and S5, plus S4D's FFT form.

Forms of ``h_t = lam * h_{t-1} + v_t``, one signature ``(v, lam, initial_state=None,
output_final_state=False) -> (h_all, final_state)``: ``diag_scan_naive`` (the specification),
``diag_scan_chunk`` (chunked Toeplitz-of-powers form, exported as ``diag_scan``) and
``diag_scan_step`` (one decoding step). ``s4d_conv`` is S4D's whole layer response as an FFT
convolution with the initial-state response and the final state. See README.md for derivations.
"""

from .chunk import diag_scan_chunk
from .conv import matmul_complex_real, matmul_re, s4d_conv
from .naive import diag_scan_naive
from .step import diag_scan_step

diag_scan = diag_scan_chunk

__all__ = [
    "diag_scan",
    "diag_scan_chunk",
    "diag_scan_naive",
    "diag_scan_step",
    "matmul_complex_real",
    "matmul_re",
    "s4d_conv",
]
