"""Token cache and document-level splits: tokenise a corpus once, memory-map it afterwards.

Layout of a cache entry (under ``cache_dir``, default ``$LONGSSM_CACHE`` or
``~/.cache/longssm/tokens``):

    <slug>-<key>.npy    (N,) uint16 (vocab <= 65536) or uint32 tokens, in ``.npy`` format
    <slug>-<key>.json   sidecar: document names, start offsets and UTF-8 byte counts, vocab, ...

``key`` hashes the resolved sources (file paths, sizes and mtimes; the spec for synthetic
sources), the tokeniser's identity and the split seed, so editing a file or changing the tokeniser
makes a new entry. Both files are written to a temporary name and renamed, the sidecar last: an
entry whose sidecar exists is complete. Building one holds a batch of documents in memory, not the
corpus: tokens go to a scratch file in reading order, then into the entry in the stored order.

Each text document is stored as ``[sep] + tokens(document)``; its start offset points at its
separator. Documents are stored in a seeded order (sorted by a hash of ``split_seed`` and the
document name, so the order does not depend on how files were listed) and the splits are
contiguous runs of that order: train, then validation, then test. Each split is therefore a
slice of one memory map. With at least three documents a split holds whole documents
(``round(fraction * n)`` of them, at least one each); with one or two documents (a single book,
a ``markov:`` source) the token stream is cut into contiguous ranges by the fractions instead.

A table corpus whose file set names the splits (``longssm.data.tables``: every document has a
split and all three occur) keeps them instead: its documents are stored train, validation, test,
each in reading order (a row of wikitext is a line of an article, so order matters), and the
sidecar's ``split_docs`` holds the document count of each split; the fractions are then unused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longssm.data.errors import DataError
from longssm.data.sources import MarkovSource, resolve_sources
from longssm.data.tokenizers import ByteTokenizer, Tokenizer

CACHE_FORMAT = 1
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
#: Documents encoded per ``encode_batch`` call.
ENCODE_BATCH = 64


@dataclass
class TokenCorpus:
    """One split of a tokenised corpus.

    Attributes:
        tokens: (N,) uint16/uint32 tokens (a read-only memory map slice).
        doc_starts: (D,) int64 positions in ``tokens`` where a document (its separator) begins.
        vocab_size: size of the token vocabulary (257 for bytes, V for ``markov:``).
        sep_id: the document separator token, or None for symbol sources.
        names: the names of the documents that start in this split, in stored order.
        split: "train", "validation" or "test".
        num_bytes: UTF-8 bytes of text behind ``tokens`` (for bits per byte); exact for whole
            documents, pro rata for a document cut by a contiguous-range split; 0 for symbols.
        path: the cache ``.npy`` file.
        from_cache: True when the entry existed and nothing was tokenised.
        meta: the sidecar dictionary.
    """

    tokens: np.ndarray
    doc_starts: np.ndarray
    vocab_size: int
    sep_id: int | None
    names: list[str]
    split: str
    num_bytes: int
    path: Path
    from_cache: bool
    meta: dict = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)


def default_cache_dir() -> Path:
    """``$LONGSSM_CACHE`` if set, else ``~/.cache/longssm/tokens``."""
    env = os.environ.get("LONGSSM_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/longssm/tokens").expanduser()


def _check_fractions(fractions) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions must be three positive numbers (train, validation, test) summing "
            f"to 1, got {fractions}"
        )
    return fr


def _order_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()


def _slug(spec) -> str:
    text = spec if isinstance(spec, str) else "+".join(spec)
    base = os.path.basename(text.rstrip("/\\")) or text
    return re.sub(r"[^A-Za-z0-9]+", "_", base)[:40] or "corpus"


def _stored_order(names, splits, split_seed: int) -> tuple[list[int], list[int] | None]:
    """(reading indices in stored order, documents per split or None) (module docstring)."""
    if all(s is not None for s in splits) and set(splits) == set(SPLITS):
        order = sorted(range(len(names)), key=lambda i: (SPLITS.index(splits[i]), i))
        return order, [splits.count(s) for s in SPLITS]
    return sorted(range(len(names)), key=lambda i: (_order_key(split_seed, names[i]), i)), None


def _tokenise(sources, tokenizer: Tokenizer | None, path: Path, split_seed: int, progress):
    """Tokenise every document into ``path`` (.npy) in the stored order; returns the sidecar dict
    (without spec, tokenizer and key).

    Memory stays bounded by one encoding batch: documents are appended to a scratch file in the
    order they are read, then copied into ``path`` in the seeded order, both memory-mapped.
    """

    markov = isinstance(sources[0], MarkovSource)
    if markov:
        vocab, sep = sources[0].chain.vocab_size, None
    else:
        vocab, sep = tokenizer.vocab_size, tokenizer.sep_id
    dtype = np.dtype(np.uint16 if vocab <= (1 << 16) else np.uint32)
    scratch = path.with_name(f".{path.stem}.{os.getpid()}.scratch")
    names, lengths, n_bytes, splits = [], [], [], []  # per document, in reading order
    try:
        with open(scratch, "wb") as raw:

            def append(name: str, ids, text_bytes: int, split: str | None = None) -> None:
                ids = np.asarray(ids)
                if sep is not None:
                    ids = np.concatenate([[sep], ids])
                raw.write(ids.astype(dtype, copy=False).tobytes())
                names.append(name)
                lengths.append(len(ids))
                n_bytes.append(text_bytes)
                splits.append(split)

            if markov:
                doc = next(sources[0].documents())
                append(doc.name, doc.tokens, 0)
            else:
                _encode_documents(sources, tokenizer, append, progress)
        if not names:
            labels = ", ".join(repr(s.label) for s in sources)
            raise DataError(f"corpus {labels} is empty: its documents hold no text; give text files")
        read_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        order, split_docs = _stored_order(names, splits, split_seed)
        total = int(sum(lengths))
        unordered = np.memmap(scratch, dtype=dtype, mode="r", shape=(total,))
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(total,))
        pos = 0
        for i in order:
            a = read_starts[i]
            out[pos : pos + lengths[i]] = unordered[a : a + lengths[i]]
            pos += lengths[i]
        out.flush()
        del out, unordered
    finally:
        scratch.unlink(missing_ok=True)
    stored_lengths = np.array([lengths[i] for i in order], dtype=np.int64)
    return {
        "format": CACHE_FORMAT,
        "vocab_size": int(vocab),
        "sep_id": None if sep is None else int(sep),
        "dtype": dtype.name,
        "num_tokens": total,
        "split_seed": split_seed,
        "names": [names[i] for i in order],
        "doc_starts": np.concatenate([[0], np.cumsum(stored_lengths)[:-1]]).tolist(),
        "doc_bytes": [int(n_bytes[i]) for i in order],
        **({"split_docs": split_docs} if split_docs else {}),
    }


def _encode_documents(sources, tokenizer: Tokenizer, append, progress) -> None:
    """Encode the text documents of ``sources`` in batches; ``append(name, ids, n_bytes)`` each."""
    from tqdm.auto import tqdm

    # tables: rows are not counted ahead
    total = None if any(hasattr(s, "tables") for s in sources) else (
        sum(len(getattr(s, "files", ())) for s in sources) or None)  # fmt: skip
    big = sum(s.approx_bytes for s in sources) > (1 << 20)
    bar = tqdm(
        total=total,
        unit="doc",
        desc="tokenising",
        disable=progress is False or (progress is None and not big),
        delay=0 if progress else 1.0,
    )
    batch = []

    def flush():
        arrays = tokenizer.encode_batch([d.text for d in batch])
        for d, ids in zip(batch, arrays, strict=True):
            append(d.name, ids, len(d.text.encode("utf-8")), d.split)
        batch.clear()

    for source in sources:
        for d in source.documents():
            bar.update(1)
            if d.text:
                batch.append(d)
            if len(batch) >= ENCODE_BATCH:
                flush()
    if batch:
        flush()
    bar.close()


def _write_sidecar(side: Path, meta: dict) -> None:
    tmp_side = side.with_name(f".{side.stem}.{os.getpid()}.tmp.json")
    tmp_side.write_text(json.dumps(meta))
    os.replace(tmp_side, side)


def cache_entry(
    spec,
    tokenizer: Tokenizer | None = None,
    cache_dir: str | Path | None = None,
    split_seed: int = 0,
    progress: bool | None = None,
    text_field: str = "text",
) -> tuple[np.ndarray, dict, bool]:
    """Tokenise ``spec`` into the cache unless already there, and memory-map it.

    Args:
        spec: corpus spec or list of specs (see ``sources``).
        tokenizer: defaults to ``ByteTokenizer``; ignored by ``markov:`` sources.
        cache_dir: defaults to ``default_cache_dir()``.
        split_seed: seeds the stored document order (hence the splits).
        progress: True/False forces the progress bar; None shows it for corpora over 1 MiB
            that take more than a second.
        text_field: the text column of table sources (it is part of their fingerprint).

    Returns:
        (tokens (N,) read-only memmap, sidecar dict, True if it was already cached).
    """
    sources = resolve_sources(spec, text_field)
    tokenizer = tokenizer or ByteTokenizer()
    markov = isinstance(sources[0], MarkovSource)
    ident = "symbols" if markov else tokenizer.identity
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "sources": [[s.label, s.fingerprint()] for s in sources],
            "tokenizer": ident,
            "split_seed": split_seed,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"{_slug(spec)}-{key}.npy"
    side = path.with_suffix(".json")
    hit = path.is_file() and side.is_file()
    if hit:
        meta = json.loads(side.read_text())
        hit = meta.get("format") == CACHE_FORMAT
    if not hit:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        try:
            meta = _tokenise(sources, tokenizer, tmp, split_seed, progress)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        meta.update(spec=spec, tokenizer=ident, key=key)
        _write_sidecar(side, meta)
    return np.load(path, mmap_mode="r"), meta, hit


def split_ranges(meta: dict, fractions=DEFAULT_FRACTIONS) -> dict[str, tuple[int, int]]:
    """Token ranges ``[start, end)`` of each split (see the module docstring for the rule).

    Raises:
        DataError: if a split would be empty.
    """
    f_train, f_val, _ = _check_fractions(fractions)
    n_tok = meta["num_tokens"]
    starts = meta["doc_starts"]
    n = len(starts)
    if meta.get("split_docs"):
        n_train, n_val, _ = meta["split_docs"]
        bounds = [0, starts[n_train], starts[n_train + n_val], n_tok]
    elif n >= 3:
        n_val = max(1, round(f_val * n))
        n_test = max(1, round((1.0 - f_train - f_val) * n))
        n_train = n - n_val - n_test
        if n_train < 1:
            n_train, n_val, n_test = 1, 1, n - 2
        bounds = [0, starts[n_train], starts[n_train + n_val], n_tok]
    else:
        bounds = [0, round(f_train * n_tok), round((f_train + f_val) * n_tok), n_tok]
    ranges = {s: (bounds[i], bounds[i + 1]) for i, s in enumerate(SPLITS)}
    empty = [s for s, (a, b) in ranges.items() if b - a < 2]
    if empty:
        raise DataError(
            f"split(s) {', '.join(empty)} would hold fewer than 2 tokens ({n} document(s), "
            f"{n_tok} tokens, fractions {tuple(fractions)}); give a larger corpus"
        )
    return ranges


def load_corpus(
    spec,
    tokenizer: Tokenizer | None = None,
    split: str = "train",
    cache_dir: str | Path | None = None,
    fractions=DEFAULT_FRACTIONS,
    split_seed: int = 0,
    progress: bool | None = None,
    text_field: str = "text",
) -> TokenCorpus:
    """Load one split of a corpus, tokenising it into the cache on first use.

    Args:
        spec: corpus spec or list of specs, e.g. "python-stdlib", "markov:2:16:0", a path.
        tokenizer: defaults to ``ByteTokenizer``; ignored by ``markov:`` sources (their tokens
            are the chain's symbols, vocab V).
        split: "train", "validation" (or "val") or "test".
        cache_dir: defaults to ``$LONGSSM_CACHE`` or ``~/.cache/longssm/tokens``.
        fractions: (train, validation, test), positive, summing to 1.
        split_seed: seeds which documents land in which split.
        progress: progress bar control, see ``cache_entry``.
        text_field: the text column of table sources (Parquet, JSON Lines, Arrow).

    Returns:
        The split as a ``TokenCorpus``.
    """
    split = "validation" if split == "val" else split
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    _check_fractions(fractions)
    tokens, meta, hit = cache_entry(spec, tokenizer, cache_dir, split_seed, progress, text_field)
    a, b = split_ranges(meta, fractions)[split]
    starts = np.asarray(meta["doc_starts"], dtype=np.int64)
    ends = np.append(starts[1:], meta["num_tokens"])
    inside = (starts >= a) & (starts < b)
    overlap = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0, None)
    share = overlap / np.maximum(ends - starts, 1)
    num_bytes = int(round(float(share @ np.asarray(meta["doc_bytes"], dtype=np.float64))))
    return TokenCorpus(
        tokens=tokens[a:b],
        doc_starts=starts[inside] - a,
        vocab_size=meta["vocab_size"],
        sep_id=meta["sep_id"],
        names=[n for n, keep in zip(meta["names"], inside, strict=True) if keep],
        split=split,
        num_bytes=num_bytes,
        path=Path(tokens.filename),
        from_cache=hit,
        meta=meta,
    )
