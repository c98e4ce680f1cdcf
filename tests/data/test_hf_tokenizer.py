"""``hf:PATH`` tokenizers: any tokenizer.json, its separator, metadata round trip, cache keys."""

from __future__ import annotations

import json

import pytest

from longssm.config import ConfigError, DataConfig
from longssm.data import (
    ByteTokenizer,
    DataError,
    HFTokenizer,
    cache_entry,
    get_tokenizer,
    tokenizer_from_dict,
)

tokenizers = pytest.importorskip("tokenizers")

SAMPLES = ["hello world", "naïve café — 日本語 ✓ 🐍\n\ttabs\r\n", "a<|endoftext|>b", ""]


@pytest.fixture
def tok_dir(tmp_path):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<pad>", "<|endoftext|>"], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["state space models carry state"] * 10, trainer=trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_load_file_or_directory_round_trip(tok_dir):
    a, b = HFTokenizer.load(tok_dir), get_tokenizer(f"hf:{tok_dir / 'tokenizer.json'}")
    size = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    assert a.sep_token == "<|endoftext|>" and a.sep_id == 1 and a.vocab_size == size > 257
    again = tokenizer_from_dict(json.loads(json.dumps(a.to_dict())))
    for text in SAMPLES:
        assert a.encode(text) == b.encode(text) == again.encode(text)
        assert a.decode(a.encode(text)) == text
    # a special token's text inside a document is text, not a separator
    assert a.sep_id not in a.encode("a<|endoftext|>b")


def test_eos_token_names_the_separator(tok_dir):
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<pad>"}}))
    assert HFTokenizer.load(tok_dir).sep_id == 0


def test_byte_export_encodes_like_bytes():
    byte = ByteTokenizer()
    hf = HFTokenizer(tokenizers.Tokenizer.from_str(byte.tokenizers_json()))
    assert hf.sep_id == byte.sep_id and hf.vocab_size == byte.vocab_size
    for text in SAMPLES + ["\x00\x7f  x", "a<|sep|>b"]:
        assert hf.encode(text) == byte.encode(text) and hf.decode(hf.encode(text)) == text


def test_cache_keys_on_the_tokenizer(tok_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("state space models carry state " * 200)
    hf = HFTokenizer.load(tok_dir)
    t1, m1, _ = cache_entry(str(corpus), hf, tmp_path / "cache")
    t2, m2, _ = cache_entry(str(corpus), ByteTokenizer(), tmp_path / "cache")
    assert m1["key"] != m2["key"] and m1["tokenizer"] == hf.identity
    assert len(t1) < len(t2) and m1["vocab_size"] == hf.vocab_size


def test_bad_specs(tmp_path):
    assert DataConfig(tokenizer=f"hf:{tmp_path}").tokenizer.startswith("hf:")
    with pytest.raises(ConfigError, match="'hf:PATH'"):
        DataConfig(tokenizer="hf")
    with pytest.raises(DataError, match="no tokenizer file"):
        get_tokenizer(f"hf:{tmp_path}")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a tokenizers JSON file"):
        get_tokenizer(f"hf:{tmp_path}")
