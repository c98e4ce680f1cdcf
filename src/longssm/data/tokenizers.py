"""Tokenisers: raw UTF-8 bytes, a byte-level BPE trained locally with ``tokenizers``, or any
``tokenizer.json`` file (a Hugging Face checkpoint's tokenizer: ``HFTokenizer``).

Both give ``encode(str) -> list[int]``, ``encode_batch(list[str]) -> list[np.ndarray]``,
``decode(list[int]) -> str``, ``vocab_size``, ``sep_id`` (the document separator, placed before
every document in a corpus and dropped by ``decode``) and ``to_dict()``, which
``tokenizer_from_dict`` turns back into an identical tokeniser (it is saved with checkpoints).
``identity`` is a short hash of ``to_dict()``, used in cache keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from longssm.data.errors import DataError
from longssm.data.sources import Document

SEP_TOKEN = "<|sep|>"


class Tokenizer:
    """Shared behaviour; subclasses define ``encode``, ``decode``, ``vocab_size``, ``sep_id``,
    ``to_dict``."""

    vocab_size: int
    sep_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def tokenizers_json(self) -> str:
        """This tokeniser as a ``tokenizers`` JSON document (what ``tokenizer.json`` holds)."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Encode several texts; returns one (N_i,) int64 array per text."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    @property
    def identity(self) -> str:
        """Short stable hash of ``to_dict()``: equal for tokenisers that encode identically."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255 plus the document separator 256 (vocab 257)."""

    vocab_size = 257
    sep_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; separators are dropped and invalid UTF-8 becomes U+FFFD."""
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "byte"}

    def tokenizers_json(self) -> str:
        """A byte-level BPE without merges: id b for byte b, ``<|sep|>`` = 256; it encodes every
        string exactly as this tokeniser does (exports carry it as ``tokenizer.json``)."""
        tk = _tokenizers_lib()
        vocab = {char: byte for byte, char in enumerate(_byte_chars())}
        tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        tok.add_special_tokens([SEP_TOKEN])
        return tok.to_str()

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


def _byte_chars() -> list[str]:
    """The printable character byte-level BPE writes for each byte 0..255 (GPT-2's table)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _tokenizers_lib():
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "BPE tokenisation needs the tokenizers package: pip install tokenizers "
            "(or use the byte tokeniser)"
        ) from None
    return tokenizers


class _TokenizersBacked(Tokenizer):
    """Encoding, decoding and the JSON of a ``tokenizers.Tokenizer`` held in ``self._tok``."""

    _tok = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def tokenizers_json(self) -> str:
        return self._tok.to_str()


class BPETokenizer(_TokenizersBacked):
    """Byte-level BPE (GPT-2 style) from the ``tokenizers`` package, trained locally.

    Byte-level pre-tokenisation makes every string encodable and ``decode(encode(s)) == s``.
    The separator ``<|sep|>`` is a special token, never produced from text.

    Args:
        tok: a ``tokenizers.Tokenizer`` holding ``SEP_TOKEN`` as a special token.
    """

    def __init__(self, tok):
        # Text that happens to contain "<|sep|>" (this very file does) must encode as text, not
        # as a document boundary; the flag is not saved in the JSON, so set it on every build.
        tok.encode_special_tokens = True
        self._tok = tok
        sep = tok.token_to_id(SEP_TOKEN)
        if sep is None:
            raise DataError(
                f"BPE tokenizer has no {SEP_TOKEN} special token; train it with BPETokenizer.train"
            )
        self.sep_id = sep
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(
        cls, documents: Iterable[Document | str], vocab_size: int, min_frequency: int = 2
    ) -> BPETokenizer:
        """Train a byte-level BPE on texts.

        Args:
            documents: ``Document``s or strings.
            vocab_size: target size including the 256 byte symbols and the separator (> 257).
            min_frequency: merges rarer than this are not learnt.

        Returns:
            The trained tokeniser.
        """
        if vocab_size <= 257:
            raise DataError(f"BPE vocab_size must exceed 257 (bytes + separator), got {vocab_size}")
        tk = _tokenizers_lib()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[SEP_TOKEN],
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        texts = (d.text if isinstance(d, Document) else d for d in documents)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def to_dict(self) -> dict:
        return {"kind": "bpe", "json": self._tok.to_str()}

    def save(self, path: str | Path) -> None:
        """Write the tokenizers JSON file."""
        self._tok.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizers JSON file written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no BPE tokenizer file '{path}'; train one with BPETokenizer.train")
        tk = _tokenizers_lib()
        try:
            return cls(tk.Tokenizer.from_file(str(path)))
        except Exception as exc:
            raise DataError(f"'{path}' is not a tokenizers JSON file: {exc}") from None

    @classmethod
    def from_str(cls, blob: str) -> BPETokenizer:
        """Rebuild from the JSON string in ``to_dict()['json']``."""
        return cls(_tokenizers_lib().Tokenizer.from_str(blob))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


# Document separators looked for in a tokenizer.json, in order, when none is named.
SEP_CANDIDATES = (SEP_TOKEN, "<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<s>", "<bos>")


class HFTokenizer(_TokenizersBacked):
    """Any ``tokenizers`` JSON file (``tokenizer.json`` of a Hugging Face checkpoint).

    The document separator is ``sep_token`` when given, else the checkpoint's ``eos_token``
    (``tokenizer_config.json``), else the first of ``SEP_CANDIDATES`` in the vocabulary.
    ``vocab_size`` is one more than the largest id (a model's embedding must have at least that
    many rows). Text is encoded without added special tokens, and special-token strings inside
    text encode as text.

    Args:
        tok: a ``tokenizers.Tokenizer``. sep_token: the separator's string. source: where it came
            from (for messages).
    """

    def __init__(self, tok, sep_token: str | None = None, source: str = "tokenizer.json"):
        tok.encode_special_tokens = True
        self._tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise DataError(f"{source} has an empty vocabulary")
        names = [sep_token] if sep_token else list(SEP_CANDIDATES)
        found = [n for n in names if n in vocab]
        if not found:
            raise DataError(
                f"{source} has no document separator: none of {', '.join(names)} is in its "
                "vocabulary (name one as eos_token in tokenizer_config.json)"
            )
        self.sep_token = found[0]
        self.sep_id = vocab[self.sep_token]
        self.vocab_size = max(vocab.values()) + 1

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        """Read ``path`` (a ``tokenizer.json`` file or a directory holding one)."""
        path = Path(path).expanduser()
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"no tokenizer file '{file}' (expected a tokenizer.json or a directory "
                            "holding one)")  # fmt: skip
        tk = _tokenizers_lib()
        try:
            tok = tk.Tokenizer.from_file(str(file))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"'{file}' is not a tokenizers JSON file: {first}") from None
        return cls(tok, _eos_token(file.parent), source=str(file))

    def to_dict(self) -> dict:
        return {"kind": "hf", "json": self._tok.to_str(), "sep": self.sep_token}

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, sep={self.sep_token!r})"


def _eos_token(directory: Path) -> str | None:
    """``eos_token`` of ``directory/tokenizer_config.json`` (a string or ``{"content": ...}``)."""
    path = directory / "tokenizer_config.json"
    try:
        eos = json.loads(path.read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) and eos else None


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokeniser from ``to_dict()`` metadata."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe" and "json" in d:
        return BPETokenizer.from_str(d["json"])
    if kind == "hf" and "json" in d:
        return HFTokenizer(_tokenizers_lib().Tokenizer.from_str(d["json"]), d.get("sep"))
    raise DataError(
        f"unknown tokenizer metadata {str(d)[:80]!r}; expected kind 'byte', 'bpe' or 'hf'"
    )


def get_tokenizer(name: str) -> Tokenizer:
    """``"byte"``, ``"hf:PATH"`` (a tokenizer.json or a directory holding one) or the path of a
    BPE JSON file saved by ``BPETokenizer.save``."""
    if name == "byte":
        return ByteTokenizer()
    if name.startswith("hf:"):
        return HFTokenizer.load(name[3:])
    if name.endswith(".json") or Path(name).is_file():
        return BPETokenizer.load(name)
    raise DataError(f"unknown tokenizer '{name}'; expected 'byte' or a BPE .json file")
