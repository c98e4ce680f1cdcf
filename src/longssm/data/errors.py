"""The one exception the data package raises for bad input.

``DataError`` subclasses ``ValueError`` so callers that already catch ``ValueError`` keep working.
Every message is one line saying what was expected and, where it helps, how to fix it.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input: a missing or binary file, an empty corpus, an unknown source, bad sizes."""
