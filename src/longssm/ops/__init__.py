"""Pure tensor functions: linear-recurrence scans with ``initial_state`` in and ``final_state`` out.

Every op comes in forms with one signature, layout ``[batch, time, ...]``: ``naive`` (the
specification: a readable sequential loop), ``chunk`` (the fast training form), optional fused
kernels (numba on CPU, Triton on CUDA) and ``step`` (one recurrent step for decoding). Each op's
dispatcher (``selective_scan``, ``longhorn``, ``ssd``, ``diag_scan``) takes ``path="auto" | <form>``
and is the only place that picks a form; its ``resolve_path`` says which form runs. Four ops
around the scans follow the same pattern: ``causal_conv`` (Mamba's short convolution with carried
history), ``rms_norm`` (the language model's norm, with the residual add before it in
``add_rms_norm``; no state), ``step_size`` (Mamba's Δ = softplus(u Wᵀ + b); no state) and
``cross_entropy`` (the training loss; no state). Op folders share ``_common.py``
and ``_numba.py`` and never import each other. See the README beside each op for its derivation.
"""

from longssm.ops._common import numba_available, torch_forms, triton_available

__all__ = ["numba_available", "torch_forms", "triton_available"]
