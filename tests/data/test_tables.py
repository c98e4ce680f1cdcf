"""Table corpora (Parquet, JSON Lines, Arrow, save_to_disk) give the token stream of the same text
written as plain text: ``[sep] + bytes(row)`` per row, splits from the file set, reading order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longssm.cli import main
from longssm.data import ByteTokenizer, DataError, load_corpus
from longssm.data.tables import split_of

SPLIT_ROWS = {
    "train": ["first row of the training split", "", "naïve café — 日本語 ✓", "a<|sep|>b " * 5,
              "the last training row"],
    "validation": ["validation one", "validation two\nwith a newline"],
    "test": ["test row", "another test row", "third"],
}


def expected_stream(rows: list[str]) -> np.ndarray:
    tok = ByteTokenizer()
    return np.concatenate([[tok.sep_id, *tok.encode(r)] for r in rows if r]).astype(np.int64)


def write_jsonl(folder, field="text"):
    folder.mkdir()
    for split, rows in SPLIT_ROWS.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({field: r, "id": len(r)}) + "\n")
    return folder


def write_parquet(folder):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    folder.mkdir()
    for split, rows in SPLIT_ROWS.items():
        # several row groups and batches: the reader must keep their order
        pq.write_table(pa.table({"id": list(range(len(rows))), "text": rows}),
                       folder / f"{split}-00000-of-00001.parquet", row_group_size=2)
    return folder


def write_arrow(folder):
    pa = pytest.importorskip("pyarrow")
    folder.mkdir()
    for split, rows in SPLIT_ROWS.items():
        with pa.OSFile(str(folder / f"{split}.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, pa.schema([("text", pa.string())])) as writer:
                for i in range(0, len(rows), 2):
                    writer.write_batch(pa.record_batch([pa.array(rows[i:i + 2])], names=["text"]))
    return folder


def write_saved(folder):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": r})
                               for s, r in SPLIT_ROWS.items()})  # fmt: skip
    dd.save_to_disk(str(folder))
    return folder


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet, "arrow": write_arrow,
           "save_to_disk": write_saved}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_table_splits_equal_the_plain_text_stream(kind, tmp_path):
    folder = WRITERS[kind](tmp_path / kind)
    for split, rows in SPLIT_ROWS.items():
        corpus = load_corpus(str(folder), ByteTokenizer(), split, cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(np.asarray(corpus.tokens, dtype=np.int64),
                                      expected_stream(rows), err_msg=f"{kind} {split}")
        text = "".join(r for r in rows)
        assert corpus.num_bytes == len(text.encode("utf-8"))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_one_row_equals_the_same_text_file(suffix, tmp_path):
    """Without named splits a one-document table is cut by the ratio, exactly like a text file."""
    text = "".join(f"line {i}: state space models carry state\n" for i in range(200))
    plain = tmp_path / "book.txt"
    plain.write_text(text)
    table = tmp_path / f"book{suffix}"
    if suffix == ".jsonl":
        table.write_text(json.dumps({"text": text}) + "\n")
    else:
        pa = pytest.importorskip("pyarrow")
        pytest.importorskip("pyarrow.parquet").write_table(pa.table({"text": [text]}), table)
    for split in ("train", "validation", "test"):
        a = load_corpus(str(plain), ByteTokenizer(), split, cache_dir=tmp_path / "c")
        b = load_corpus(str(table), ByteTokenizer(), split, cache_dir=tmp_path / "c")
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_text_field_and_fingerprint(tmp_path):
    folder = write_jsonl(tmp_path / "j", field="content")
    with pytest.raises(DataError, match="no field 'text'"):
        load_corpus(str(folder), ByteTokenizer(), cache_dir=tmp_path / "c")
    corpus = load_corpus(str(folder), ByteTokenizer(), "test", cache_dir=tmp_path / "c",
                         text_field="content")
    np.testing.assert_array_equal(np.asarray(corpus.tokens, dtype=np.int64),
                                  expected_stream(SPLIT_ROWS["test"]))


def test_split_names():
    assert split_of("train-00000-of-00002.parquet") == "train"
    assert split_of("wikitext-103/validation-00000-of-00001.parquet") == "validation"
    assert split_of("test/data-00000-of-00001.arrow") == "test"
    assert split_of("wiki.valid.jsonl") == "validation"
    assert split_of("shard-3.parquet") is None


def _cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_bad_tables_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    pa = pytest.importorskip("pyarrow")
    no_text = tmp_path / "no_text.parquet"
    pytest.importorskip("pyarrow.parquet").write_table(pa.table({"body": ["a", "b"]}), no_text)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for corpus, message in ((no_text, "has no column 'text' (columns: body)"),
                            (empty, "holds no rows")):  # fmt: skip
        out = tmp_path / f"run-{corpus.stem}"
        code, err = _cli(["train", "--out", str(out), f"--data.corpus={corpus}", "--quiet",
                          "--train.steps=1"], capsys)  # fmt: skip
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
    code, err = _cli(["corpus", str(no_text)], capsys)
    assert code == 2 and "no column 'text'" in err


def test_missing_pyarrow_is_a_one_line_hint(tmp_path, monkeypatch):
    table = tmp_path / "x.parquet"
    table.write_bytes(b"PAR1")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    with pytest.raises(DataError, match=r"needs pyarrow: pip install 'longssm\[datasets\]'"):
        load_corpus(str(table), ByteTokenizer(), cache_dir=tmp_path / "c")
