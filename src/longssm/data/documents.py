"""A corpus document and the ``Source`` interface every corpus source implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Document:
    """One document of a corpus; the tokeniser puts a separator before each one.

    Attributes:
        name: unique, stable name (``"<source>:<relative path>"``), used for splits.
        text: the document's text (empty for symbol sources).
        tokens: (N,) int array for sources that are already symbols (``markov:``), else None.
    """

    name: str
    text: str
    tokens: np.ndarray | None = None
    split: str | None = None
    """"train", "validation" or "test" when the file set names the split (tables), else None."""


class Source:
    """A resolved source: a fingerprint for cache keys and a lazy document iterator."""

    label: str

    def fingerprint(self) -> list:
        """JSON-serialisable identity: changes whenever the documents could change."""
        raise NotImplementedError

    def documents(self) -> Iterator[Document]:
        """Yield the documents in a deterministic order."""
        raise NotImplementedError

    @property
    def approx_bytes(self) -> int:
        """Rough size of the text, for deciding on a progress bar."""
        return 0
