"""Tokenisers: byte and BPE round trips, separators, metadata round trips, lazy import errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from longssm.data import (
    BPETokenizer,
    ByteTokenizer,
    DataError,
    Document,
    get_tokenizer,
    tokenizer_from_dict,
)

SAMPLES = [
    "",
    "hello world",
    "naïve café — 日本語 ✓ 🐍\n\ttabs\r\n",
    "a<|sep|>b",
    "\x00\x7f",
]


def _train_text() -> list[str]:
    rng = np.random.default_rng(0)
    words = ["state", "space", "model", "hidden", "length", "extension", "carry", "token"]
    return [" ".join(rng.choice(words, size=200)) + "\n" for _ in range(20)] + ["ünïcödé ✓ 🐍"]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(_train_text(), vocab_size=300)


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    (arr,) = tok.encode_batch([text])
    assert arr.tolist() == ids


def test_byte_separator_and_invalid_bytes():
    tok = ByteTokenizer()
    assert tok.vocab_size == 257 and tok.sep_id == 256
    assert tok.decode([104, 256, 105]) == "hi"
    assert tok.decode([0xFF, 104]) == "\ufffdh"


def test_byte_metadata():
    tok = tokenizer_from_dict(ByteTokenizer().to_dict())
    assert isinstance(tok, ByteTokenizer)
    assert tok.identity == ByteTokenizer().identity
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_bpe_round_trip(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    # Text that spells the separator must not produce the separator token.
    assert bpe.sep_id not in ids
    assert [a.tolist() for a in bpe.encode_batch([text])] == [ids]


def test_bpe_learns_merges(bpe):
    assert 257 < bpe.vocab_size <= 300
    text = "state space model"
    assert len(bpe.encode(text)) < len(text.encode())
    assert bpe.decode([bpe.sep_id] + bpe.encode("x")) == "x"


def test_bpe_save_load_and_dict(bpe, tmp_path):
    path = tmp_path / "bpe.json"
    bpe.save(path)
    for other in (
        BPETokenizer.load(path),
        get_tokenizer(str(path)),
        tokenizer_from_dict(bpe.to_dict()),
    ):
        assert other.vocab_size == bpe.vocab_size and other.sep_id == bpe.sep_id
        assert other.identity == bpe.identity
        for text in SAMPLES:
            assert other.encode(text) == bpe.encode(text)
    assert bpe.identity != ByteTokenizer().identity


def test_bpe_trains_on_documents():
    docs = [Document(f"d{i}", t) for i, t in enumerate(_train_text())]
    tok = BPETokenizer.train(docs, vocab_size=280)
    assert tok.decode(tok.encode(docs[0].text)) == docs[0].text


def test_bpe_errors(tmp_path):
    with pytest.raises(DataError, match="exceed 257"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(DataError, match="no BPE tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers JSON"):
        BPETokenizer.load(bad)
    with pytest.raises(DataError, match="unknown tokenizer"):
        tokenizer_from_dict({"kind": "sentencepiece"})
    with pytest.raises(DataError, match="unknown tokenizer"):
        get_tokenizer("gpt2")


def test_missing_tokenizers_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(DataError, match="pip install tokenizers"):
        BPETokenizer.train(["abc"], vocab_size=300)
