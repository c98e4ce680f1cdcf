"""The one exception the evaluation package raises for bad input.

``EvalError`` subclasses ``ValueError`` so the command line maps it to exit code 2; every message is
one line saying what was expected.
"""

from __future__ import annotations


class EvalError(ValueError):
    """Bad evaluation input: a missing path, a bad lengths list, an unknown protocol, too few tokens."""
