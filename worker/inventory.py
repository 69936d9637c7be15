"""Readers for inventories: CSV and NDJSON, plain or gzip, files or stdin, as one stream.

A reader yields one :class:`Record` per data row, in file order, with the line number a
person sees in an editor. A row that cannot be decoded (bad UTF-8, an NDJSON line that is
not an object) is still a record, carrying its ``problem``, so it gets a report row like any
other. A file that cannot be read on (missing, truncated gzip, broken CSV quoting) raises
:class:`InputError`: rows yielded before it stay valid and accounted for.

An empty file has no rows (and no header). Files are read as streams; nothing holds a
whole input in memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import orjson

from worker.config import Format

STDIN: Final = "-"
STDIN_NAME: Final = "<stdin>"
# One cell may be large (carried-through notes), but never unbounded: a cell beyond this makes
# the row invalid instead of growing memory without limit.
MAX_CELL_BYTES: Final = 64 * 1024
# csv refuses fields over its limit by raising mid-record, leaving the reader out of step; a
# high ceiling lets the row be read whole and refused cleanly by MAX_CELL_BYTES instead.
_CSV_FIELD_LIMIT: Final = 256 * 1024 * 1024
_BOM: Final = "\ufeff"


_SUFFIXES: Final = {
    ".csv": Format.CSV,
    ".ndjson": Format.NDJSON,
    ".jsonl": Format.NDJSON,
}


class InputError(Exception):
    """An input that cannot be read (on): names the file and, where known, the line."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


@dataclass(slots=True)
class Record:
    """One data row: where it came from, its values by column name, or why it is unreadable.

    Treated as immutable; not frozen, since one is built per row and frozen ones cost more."""

    source: str
    line: int
    fields: dict[str, object]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Input:
    """An input named on the command line, with the format it is read as. ``label`` is the
    name reports give its rows (a resumed run keeps the name its first run gave)."""

    path: str
    format: Format
    gzip: bool
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        return STDIN_NAME if self.path == STDIN else self.path


def detect(path: str, stdin_format: Format | None = None) -> Input:
    """Decide how to read ``path`` from its name (``-`` needs ``stdin_format``)."""
    if path == STDIN:
        if stdin_format is None:
            raise InputError(STDIN_NAME, "reading stdin needs --format csv or --format ndjson")
        return Input(path, stdin_format, gzip=False)
    suffixes = [s.lower() for s in Path(path).suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        fmt = stdin_format
    if fmt is None:
        raise InputError(
            path,
            "unknown format: name it .csv, .ndjson or .jsonl (optionally .gz), or pass --format",
        )
    return Input(path, fmt, compressed)


class Reader:
    """An opened input. Opening reads the CSV header, so header problems surface before any
    request is sent; iterating yields the records."""

    def __init__(self, source: Input) -> None:
        self.input = source
        self.columns: tuple[str, ...] = ()
        self._line: int | None = None
        self._binary = _open_binary(source)
        try:
            if source.format is Format.CSV:
                self._text = io.TextIOWrapper(
                    self._binary, encoding="utf-8", errors="surrogateescape", newline=""
                )
                # strict: a quote opened and never closed would otherwise swallow every later
                # row into one cell, silently; strict makes it an error naming its line.
                self._rows = csv.reader(self._text, strict=True)
                self.columns = self._read_header()
        except BaseException:
            self._binary.close()
            raise

    def close(self) -> None:
        self._binary.close()

    def __iter__(self) -> Iterator[Record]:
        try:
            if self.input.format is Format.CSV:
                yield from self._csv_records()
            else:
                yield from self._ndjson_records()
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(self.input.name, _describe(exc), self._line) from exc

    def _read_header(self) -> tuple[str, ...]:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        header: list[str] | None = []
        # Blank lines before the header are skipped: the first non-blank line names the columns.
        while header is not None and not "".join(header).strip():
            try:
                header = next(self._rows, None)
            except (EOFError, OSError, zlib.error, csv.Error) as exc:
                raise InputError(self.input.name, _describe(exc), self._rows.line_num + 1) from exc
        if header is None:
            return ()
        line = self._rows.line_num
        if header[0].startswith(_BOM):
            header[0] = header[0][len(_BOM) :]
        names = tuple(name.strip() for name in header)
        if any(_has_surrogates(name) for name in names):
            raise InputError(self.input.name, "header is not valid UTF-8", line)
        seen: dict[str, int] = {}
        for index, name in enumerate(names, start=1):
            if not name:
                raise InputError(self.input.name, f"header column {index} has no name", line)
            if name in seen:
                raise InputError(
                    self.input.name,
                    f"header names column {name!r} twice (columns {seen[name]} and {index})",
                    line,
                )
            seen[name] = index
        return names

    def _csv_records(self) -> Iterator[Record]:
        name = self.input.name
        columns = self.columns
        width = len(columns)
        rows = self._rows
        end = rows.line_num
        while True:
            start = end + 1
            self._line = start
            try:
                row = next(rows, None)
            except csv.Error as exc:
                hint = " (a quoted cell that is never closed?)" if "end of data" in str(exc) else ""
                raise InputError(name, f"CSV syntax: {exc}{hint}", start) from exc
            if row is None:
                return
            end = rows.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            problem = None
            # Every check runs whatever the first problem was: the cells must leave here as
            # valid, bounded text, since the reports carry them.
            joined = "".join(row)
            if not joined.isascii() and _has_surrogates(joined):
                problem = "is not valid UTF-8"
                row = [
                    cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    for cell in row
                ]
            if len(row) > width:
                problem = f"has {len(row)} cells but the header has {width} columns"
            fields: dict[str, object] = dict(zip(columns, row, strict=False))
            # No cell can be over the limit unless the whole row is.
            oversized = _clamp_oversized(fields) if len(joined) > MAX_CELL_BYTES else None
            yield Record(name, start, fields, problem or oversized)

    def _ndjson_records(self) -> Iterator[Record]:
        name = self.input.name
        # A read error surfaces while fetching the next line, so that is the line to name.
        self._line = 1
        for number, raw in enumerate(self._binary, start=1):
            self._line = number + 1
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield Record(name, number, {}, f"is not valid JSON: {exc}")
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__ if value is not None else "null"
                yield Record(
                    name, number, {}, f"is a JSON {_JSON_KINDS.get(kind, kind)}, not an object"
                )
                continue
            oversized = _clamp_oversized(value) if len(raw) > MAX_CELL_BYTES else None
            yield Record(name, number, value, oversized)


_JSON_KINDS: Final = {
    "list": "array",
    "str": "string",
    "int": "number",
    "float": "number",
    "bool": "boolean",
}


class Stream:
    """The records of every reader, in order, as one stream that ends (instead of raising)
    at an input that cannot be read on; ``error`` then says which and where.

    Ending cleanly matters: every record yielded before the break is already in the
    caller's hands, and must still be settled and reported.
    """

    __slots__ = ("_readers", "error")

    def __init__(self, readers: Sequence[Reader]) -> None:
        self._readers = readers
        self.error: InputError | None = None

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from read_all(self._readers)
        except InputError as exc:
            self.error = exc


def read_all(readers: Sequence[Reader]) -> Iterator[Record]:
    """Yield the records of every reader in order, as one stream, closing each when done."""
    for reader in readers:
        try:
            yield from reader
        finally:
            reader.close()


def open_inputs(inputs: Sequence[Input]) -> list[Reader]:
    """Open every input up front so a missing file or bad header stops the run before it starts."""
    readers: list[Reader] = []
    try:
        for item in inputs:
            readers.append(Reader(item))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return readers


def _open_binary(source: Input) -> IO[bytes]:
    try:
        raw: IO[bytes] = sys.stdin.buffer if source.path == STDIN else open(source.path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(source.name, _describe(exc)) from exc
    if source.gzip:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clamp_oversized(fields: dict[str, object]) -> str | None:
    """Cut over-long cells down so the report stays small, and say why the row is refused."""
    problem = None
    for key, value in fields.items():
        if isinstance(value, str) and len(value) > MAX_CELL_BYTES:
            fields[key] = value[:64] + "..."
            problem = (
                problem or f"field {key!r} is {len(value)} characters, more than {MAX_CELL_BYTES}"
            )
    return problem


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "compressed stream ended early (truncated gzip?)"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"not a valid gzip stream ({exc})"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return str(exc) or type(exc).__name__
