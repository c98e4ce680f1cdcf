"""Table corpora: Parquet, JSON Lines, Arrow and ``datasets.save_to_disk`` folders, one document a row.

    table_source("wikitext-103/", text_field="text")   -> a TableSource, or None (not a table)

Rows are read in record batches of ``ROWS_PER_BATCH`` (Parquet through ``ParquetFile.iter_batches``,
Arrow through a memory-mapped IPC reader, JSON Lines line by line), so reading never holds a whole
table; the token cache then stores the tokens memory-mapped. Parquet and Arrow need ``pyarrow``
(the ``datasets`` extra); JSON Lines needs nothing. A ``save_to_disk`` folder is read as the Arrow
files it holds (``state.json`` gives their order), so the ``datasets`` package is not needed.

A document's split comes from its file set (see ``split_of``); when every document has one and
all three splits occur, ``longssm.data.cache`` keeps those splits and their reading order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from longssm.data.documents import Document, Source
from longssm.data.errors import DataError

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".arrow")
ROWS_PER_BATCH = 1024
SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation",
               "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}  # fmt: skip
INSTALL_HINT = "reading Parquet or Arrow corpora needs pyarrow: pip install 'longssm[datasets]'"


def split_of(relative: str) -> str | None:
    """The split a table file's path names (its file name first, then its folders), else None.

    ``train-00000-of-00002.parquet`` -> train, ``validation/data-00000.arrow`` -> validation,
    ``wiki.test.jsonl`` -> test, ``shard3.parquet`` -> None.
    """
    parts = Path(relative).parts
    for part in reversed(parts):
        for word in re.split(r"[^A-Za-z]+", part.lower()):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return None


class TableSource(Source):
    """Rows of table files under ``root``, each row's ``text_field`` one document.

    Args:
        label: the spec (prefix of document names). root: folder names are relative to.
        tables: the files, in reading order. text_field: the text column.
    """

    def __init__(self, label: str, root: Path, tables: list[Path], text_field: str):
        if not isinstance(text_field, str) or not text_field:
            raise DataError(f"data.text_field must name a column, got {text_field!r}")
        self.label, self.root, self.tables, self.text_field = label, root, tables, text_field
        self._stats = [t.stat() for t in tables]

    def fingerprint(self) -> list:
        return [["table", self.text_field]] + [
            [str(t), s.st_size, s.st_mtime_ns] for t, s in zip(self.tables, self._stats)
        ]

    @property
    def approx_bytes(self) -> int:
        return sum(s.st_size for s in self._stats)

    def documents(self) -> Iterator[Document]:
        rows = 0
        for table in self.tables:
            rel = table.relative_to(self.root).as_posix() if table != self.root else table.name
            split = split_of(rel)
            for i, text in enumerate(_rows(table, self.text_field)):
                rows += 1
                yield Document(f"{self.label}:{rel}:{i}", text, split=split)
        if rows == 0:
            raise DataError(f"table corpus '{self.label}' holds no rows")


def _rows(path: Path, field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _jsonl_rows(path, field)
    if suffix == ".parquet":
        return _parquet_rows(path, field)
    return _arrow_rows(path, field)


def _text(value, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} holds {type(value).__name__}, not text; set "
                        "data.text_field to a text column")  # fmt: skip
    return value


def _jsonl_rows(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not one JSON object per line ({exc.msg})") from None
            if not isinstance(obj, dict) or field not in obj:
                keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                raise DataError(f"{path}:{n}: no field {field!r} (has: {keys}); set "
                                "data.text_field")  # fmt: skip
            yield _text(obj[field], f"{path}:{n}", field)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    return pyarrow


def _check_column(names: list[str], field: str, path: Path) -> int:
    if field not in names:
        raise DataError(f"{path} has no column {field!r} (columns: {', '.join(names)}); set "
                        "data.text_field")  # fmt: skip
    return names.index(field)


def _parquet_rows(path: Path, field: str) -> Iterator[str]:
    pa = _pyarrow()
    try:
        table = pa.parquet.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a Parquet file: {exc}") from None
    _check_column(table.schema_arrow.names, field, path)
    for batch in table.iter_batches(batch_size=ROWS_PER_BATCH, columns=[field]):
        for value in batch.column(0).to_pylist():
            yield _text(value, str(path), field)


def _arrow_batches(pa, source):
    """Record batches of an Arrow IPC stream (what ``save_to_disk`` writes) or file."""
    try:
        yield from pa.ipc.open_stream(source)
        return
    except pa.ArrowInvalid:
        source.seek(0)
    reader = pa.ipc.open_file(source)
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def _arrow_rows(path: Path, field: str) -> Iterator[str]:
    pa = _pyarrow()
    try:
        with pa.memory_map(str(path)) as source:
            for batch in _arrow_batches(pa, source):
                index = _check_column(batch.schema.names, field, path)
                column = batch.column(index)
                for start in range(0, len(column), ROWS_PER_BATCH):
                    for value in column.slice(start, ROWS_PER_BATCH).to_pylist():
                        yield _text(value, str(path), field)
    except pa.ArrowException as exc:
        raise DataError(f"{path} is not an Arrow file: {str(exc).splitlines()[0]}") from None


def _saved_dataset(folder: Path) -> list[Path]:
    """Arrow files of one ``Dataset.save_to_disk`` folder, in ``state.json``'s order."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(p.name for p in folder.glob("*.arrow"))
    return [folder / n for n in names]


def _table_files(path: Path) -> list[Path] | None:
    """The table files of a folder, or None when it is not a table folder."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"corrupt {path / 'dataset_dict.json'}: {exc}") from None
        return [f for split in splits for f in _saved_dataset(path / split)]
    if (path / "state.json").is_file() and any(path.glob("*.arrow")):
        return _saved_dataset(path)
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".")]
    tables = [f for f in files if f.suffix.lower() in TABLE_SUFFIXES]
    binary = [f for f in tables if f.suffix.lower() in (".parquet", ".arrow")]
    # a folder of Parquet/Arrow files (beside a README), or of JSON Lines files only
    if binary or (tables and len(tables) == len(files)):
        return tables
    return None


def table_source(spec: str, text_field: str = "text") -> TableSource | None:
    """A ``TableSource`` when ``spec`` is a table file or folder (see the module docstring)."""
    path = Path(os.path.expanduser(spec.strip()))
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return TableSource(spec, path.parent, [path], text_field)
    if path.is_dir():
        tables = _table_files(path)
        if tables is not None:
            missing = [t for t in tables if not t.is_file()]
            if missing:
                raise DataError(f"table corpus '{spec}' lacks {missing[0]}")
            return TableSource(spec, path, tables, text_field)
    return None
