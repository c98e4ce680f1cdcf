"""Corpora as contiguous token streams.

Sources (``python-stdlib``, ``shakespeare``, ``python-docs``, ``linux-docs``, ``markov:K:V:SEED``,
paths) -> documents -> a tokeniser (bytes or local BPE) -> a memory-mapped token cache split by
document -> ``ContiguousStreams`` of B rows x T tokens whose rows continue from step to step.

Example:
    corpus = load_corpus("python-stdlib", ByteTokenizer(), split="train")
    loader = ContiguousStreams(corpus, batch_size=64, seq_len=256)
    inputs, targets, resets, doc_mask, epoch, step = next(loader)
"""

from longssm.data.cache import (
    DEFAULT_FRACTIONS,
    SPLITS,
    TokenCorpus,
    cache_entry,
    default_cache_dir,
    load_corpus,
    split_ranges,
)
from longssm.data.errors import DataError
from longssm.data.sources import (
    NAMED_SOURCES,
    Document,
    Source,
    is_text_file,
    iter_documents,
    resolve_source,
    resolve_sources,
)
from longssm.data.streams import (
    Batch,
    ContiguousStreams,
)
from longssm.data.synthetic import MarkovChain
from longssm.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    get_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "NAMED_SOURCES",
    "SPLITS",
    "BPETokenizer",
    "Batch",
    "ByteTokenizer",
    "ContiguousStreams",
    "DataError",
    "HFTokenizer",
    "Document",
    "MarkovChain",
    "Source",
    "TokenCorpus",
    "Tokenizer",
    "cache_entry",
    "default_cache_dir",
    "get_tokenizer",
    "is_text_file",
    "iter_documents",
    "load_corpus",
    "resolve_source",
    "resolve_sources",
    "split_ranges",
    "tokenizer_from_dict",
]
