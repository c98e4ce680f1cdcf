"""Token cache: tokenise once, memory-map after; document-level splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from longssm.data import (
    BPETokenizer,
    ByteTokenizer,
    DataError,
    MarkovChain,
    cache_entry,
    load_corpus,
    split_ranges,
)


class CountingTokenizer(ByteTokenizer):
    """Byte tokeniser (same identity) that counts the texts it encodes."""

    def __init__(self):
        self.calls = 0

    def encode_batch(self, texts):
        self.calls += len(texts)
        return super().encode_batch(texts)


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(20):
        (root / f"doc{i:02d}.txt").write_text(f"document {i} " + "é" * i + "\n" * (i % 3))
    return root


def _all_splits(spec, cache_dir, **kw):
    return {
        s: load_corpus(spec, split=s, cache_dir=cache_dir, **kw)
        for s in ("train", "validation", "test")
    }


def test_tokens_and_doc_starts(corpus_dir, tmp_path):
    splits = _all_splits(str(corpus_dir), tmp_path / "cache")
    tok = ByteTokenizer()
    texts = {f"{corpus_dir}:{p.name}": p.read_text() for p in corpus_dir.iterdir()}
    for c in splits.values():
        assert c.tokens.dtype == np.uint16 and c.vocab_size == 257 and c.sep_id == 256
        assert c.doc_starts[0] == 0 and (c.tokens[c.doc_starts] == 256).all()
        assert int((np.asarray(c.tokens) == 256).sum()) == len(c.names)
        ends = list(c.doc_starts[1:]) + [len(c.tokens)]
        for name, a, b in zip(c.names, c.doc_starts, ends):
            assert tok.decode(c.tokens[a + 1 : b].tolist()) == texts[name]
        assert c.num_bytes == sum(len(texts[n].encode()) for n in c.names)


def test_split_disjoint_complete_deterministic(corpus_dir, tmp_path):
    a = _all_splits(str(corpus_dir), tmp_path / "c1")
    b = _all_splits(str(corpus_dir), tmp_path / "c2")
    names = [set(c.names) for c in a.values()]
    assert all(names) and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == {f"{corpus_dir}:doc{i:02d}.txt" for i in range(20)}
    assert [len(n) for n in names] == [18, 1, 1]
    for s in a:
        assert a[s].names == b[s].names
        np.testing.assert_array_equal(a[s].tokens, b[s].tokens)
    other = _all_splits(str(corpus_dir), tmp_path / "c3", split_seed=1)
    assert other["train"].names != a["train"].names
    assert (
        load_corpus(str(corpus_dir), split="val", cache_dir=tmp_path / "c1").split == "validation"
    )


def test_split_independent_of_listing_order(corpus_dir, tmp_path):
    files = sorted(str(p) for p in corpus_dir.iterdir())
    fwd = load_corpus(files, split="test", cache_dir=tmp_path / "a")
    rev = load_corpus(files[::-1], split="test", cache_dir=tmp_path / "b")
    assert [n.split(":")[-1] for n in fwd.names] == [n.split(":")[-1] for n in rev.names]


def test_cache_hit_does_not_retokenise(corpus_dir, tmp_path):
    tok = CountingTokenizer()
    first = load_corpus(str(corpus_dir), tok, cache_dir=tmp_path)
    assert tok.calls == 20 and not first.from_cache
    mtime = os.stat(first.path).st_mtime_ns
    second = load_corpus(str(corpus_dir), tok, split="test", cache_dir=tmp_path)
    assert tok.calls == 20 and second.from_cache
    assert second.path == first.path and os.stat(second.path).st_mtime_ns == mtime
    assert isinstance(second.tokens, np.memmap)
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
    meta = json.loads(first.path.with_suffix(".json").read_text())
    assert meta["num_tokens"] == len(np.load(first.path))


def test_cache_invalidated_by_edit_and_tokenizer(corpus_dir, tmp_path):
    tok = CountingTokenizer()
    load_corpus(str(corpus_dir), tok, cache_dir=tmp_path)
    (corpus_dir / "doc00.txt").write_text("changed text, longer than before")
    load_corpus(str(corpus_dir), tok, cache_dir=tmp_path)
    assert tok.calls == 40
    bpe = BPETokenizer.train([p.read_text() for p in corpus_dir.iterdir()], vocab_size=270)
    c = load_corpus(str(corpus_dir), bpe, cache_dir=tmp_path)
    assert not c.from_cache and c.vocab_size == bpe.vocab_size and c.sep_id == bpe.sep_id
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_cache_dir_from_environment(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "env"))
    c = load_corpus(str(corpus_dir))
    assert c.path.parent == tmp_path / "env"


def test_single_document_split_by_ranges(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("x" * 999)
    splits = _all_splits(str(f), tmp_path / "cache")
    lengths = [len(c) for c in splits.values()]
    assert sum(lengths) == 1000 and lengths == [900, 50, 50]
    assert splits["train"].doc_starts.tolist() == [0]
    assert splits["validation"].doc_starts.tolist() == []
    assert sum(c.num_bytes for c in splits.values()) == pytest.approx(999, abs=2)


def test_austen(austen_dir, tmp_path):
    splits = _all_splits(austen_dir, tmp_path)
    assert [len(c.names) for c in splits.values()] == [4, 1, 1]
    assert sum(len(c) for c in splits.values()) > 3_000_000


def test_markov_corpus(tmp_path):
    c = load_corpus("markov:1:5:2:2000", split="train", cache_dir=tmp_path)
    assert c.vocab_size == 5 and c.sep_id is None and len(c) == 1800
    expected = MarkovChain(1, 5, 2).sample(2000, seed=0)[:1800]
    np.testing.assert_array_equal(c.tokens, expected)
    # The tokeniser is irrelevant for symbols: same cache entry.
    again = load_corpus(
        "markov:1:5:2:2000", BPETokenizer.train(["ab"] * 3, 270), cache_dir=tmp_path
    )
    assert again.from_cache


def test_empty_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(tmp_path), cache_dir=tmp_path / "cache")


def test_failed_or_empty_build_leaves_no_files(corpus_dir, tmp_path):
    class FailingTokenizer(ByteTokenizer):
        def encode_batch(self, texts):
            raise RuntimeError("tokeniser broke")

    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="tokeniser broke"):
        cache_entry(str(corpus_dir), tokenizer=FailingTokenizer(), cache_dir=cache)
    assert list(cache.iterdir()) == []  # no partial entry, no scratch file
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        cache_entry(str(empty), cache_dir=cache)
    assert list(cache.iterdir()) == []
    cache_entry(str(corpus_dir), cache_dir=cache)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_bad_split_arguments(corpus_dir, tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        load_corpus(str(corpus_dir), split="dev", cache_dir=tmp_path)
    for fractions in [(0.9, 0.1, 0.0), (0.5, 0.5), (0.8, 0.1, 0.2)]:
        with pytest.raises(DataError, match="fractions"):
            load_corpus(str(corpus_dir), fractions=fractions, cache_dir=tmp_path)
    f = tmp_path / "tiny.txt"
    f.write_text("ab")
    with pytest.raises(DataError, match="fewer than 2 tokens"):
        load_corpus(str(f), cache_dir=tmp_path)


def test_split_ranges_small_document_counts():
    meta = {"num_tokens": 30, "doc_starts": [0, 10, 20]}
    assert split_ranges(meta) == {"train": (0, 10), "validation": (10, 20), "test": (20, 30)}


@pytest.mark.slow
def test_stdlib_full_tokenisation(tmp_path):
    tokens, meta, hit = cache_entry("python-stdlib", cache_dir=tmp_path, progress=False)
    assert not hit and len(tokens) > 5_000_000 and len(meta["names"]) > 500
    splits = _all_splits("python-stdlib", tmp_path)
    assert all(c.from_cache for c in splits.values())
    assert sum(len(c) for c in splits.values()) == len(tokens)
