"""The error type of ``longssm.adapt``."""

from __future__ import annotations


class AdaptError(ValueError):
    """Bad input to adapting, pruning or token reduction: an unknown method, a ratio outside
    [0, 1), an adapter that does not fit the model, a corpus the model cannot read. The CLI prints
    its one-line message and exits with code 2."""
