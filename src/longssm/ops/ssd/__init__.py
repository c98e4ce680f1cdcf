"""SSD, the Mamba-2 scan: scalar decay per head, heads sharing their group's B and C.

Forms, one signature ``(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False)
-> (y, final_state)``: ``ssd_naive`` (the specification), ``ssd_chunk`` (the chunked matmul form,
exported as ``ssd``) and ``ssd_step`` (one decoding step). See README.md for the derivation.
"""

from .chunk import ssd_chunk
from .naive import ssd_naive
from .step import ssd_step

ssd = ssd_chunk

__all__ = ["ssd", "ssd_chunk", "ssd_naive", "ssd_step"]
