"""Readers for inventories: CSV and NDJSON, plain or gzip, files or stdin, as one stream.

A reader yields one :class:`Record` per data row, in file order, with the line number a
person sees in an editor. A row that cannot be decoded (bad UTF-8, an NDJSON line that is
not an object) is still a record, carrying its ``problem``, so it gets a report row like any
other. A file that cannot be read on (missing, truncated gzip, broken CSV quoting) raises
:class:`InputError`: rows yielded before it stay valid and accounted for.

An empty file has no rows (and no header). Files are read as streams, and no row is ever
held beyond the limits below: a row past one is refused (its ``problem`` names the limit)
after being read to its end without being kept, and the rows after it are read as usual.
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
import os
import re
import stat
import sys
import zlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import orjson

from worker.config import Format
from worker.reports import EXTRA_JSON_COLUMN, RESERVED, SPILL, is_report, own_column, unneutralise

STDIN: Final = "-"
STDIN_NAME: Final = "<stdin>"
# One cell may be large (carried-through notes), but never unbounded: a cell beyond this makes
# the row invalid, and the report carries the start of it.
MAX_CELL_BYTES: Final = 64 * 1024
# What a reader holds of one row at most: a CSV record (line breaks included; counted in
# characters, which are never more than its bytes) or an NDJSON line (in bytes). A longer row
# is read to its end without being kept.
MAX_ROW_BYTES: Final = 1024 * 1024
# Levels of arrays and objects in an NDJSON row, the row's own object the first. The report
# writer (orjson) cannot write a value nested more than 254 levels deep.
MAX_DEPTH: Final = 32
# Every report row has a cell for each of the user's columns, so a header of a million
# empty names would make each report row a megabyte of commas.
MAX_COLUMNS: Final = 1024
_READ: Final = MAX_ROW_BYTES + 1
# The bytes of NDJSON read at a time.
NDJSON_BLOCK_BYTES: Final = 1 << 20
# The bytes looked at a time for the line break that ends a span.
_SPAN_LOOK: Final = 64 << 10
_BOM: Final = "\ufeff"
_BOM_BYTES: Final = _BOM.encode()
# What csv.reader gets in place of a record over MAX_ROW_BYTES: a cell no input can hold,
# since decoding with surrogateescape yields only the low surrogates U+DC80-U+DCFF.
_OVERSIZED: Final = "\ud800"


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
    if _has_surrogates(path):
        # Reports, the manifest and the logs are UTF-8: they could not name the file.
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(shown, "the file name is not valid UTF-8; rename the file")
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
        self.report = False
        self._line: int | None = None
        # The size of the file as stored (compressed, for .gz) when opened; None for stdin.
        self._binary, self._size = _open_binary(source)
        # The file as stored, for how far the reading has come.
        self._stored: IO[bytes] = getattr(self._binary, "fileobj", None) or self._binary
        try:
            if source.format is Format.CSV:
                self._open_csv()
                header = self._read_header()
                # One of this tool's reports fed back: its cells were neutralised for
                # spreadsheets and come back as they went in; its own columns are its own.
                # Any other file's column that bears a report's name is the user's.
                self.report = is_report(header)
                self.columns = (
                    tuple(map(unneutralise, header))
                    if self.report
                    else tuple(map(own_column, header))
                )
                clash = name_clash(header, self.columns)
                if clash is not None:
                    raise InputError(source.name, f"header columns {clash}")
        except BaseException:
            self._binary.close()
            raise

    @classmethod
    def continuing(cls, reader: Reader, data: IO[bytes]) -> Reader:
        """A reader of more rows of ``reader``'s CSV input, from ``data``, which starts where
        a record starts: the header is ``reader``'s, and lines count from 1 in ``data``."""
        self = cls.__new__(cls)
        self.input = reader.input
        self.columns = reader.columns
        self.report = reader.report
        self._line = None
        self._binary = self._stored = data
        self._size = None
        self._open_csv()
        return self

    def _open_csv(self) -> None:
        self._text = io.TextIOWrapper(
            self._binary, encoding="utf-8", errors="surrogateescape", newline=""
        )
        self._lines = _Lines(self._text)
        # strict: a quote opened and never closed would otherwise swallow every later
        # row into one cell, silently; strict makes it an error naming its line.
        self._rows = csv.reader(self._lines, strict=True)

    @property
    def lines_read(self) -> int:
        """The physical lines of a CSV input read so far (the header's, once opened)."""
        return self._rows.line_num + self._lines.skew

    def rows_binary(self) -> IO[bytes] | None:
        """A CSV file's bytes from its first row on (the header read, the records not
        yet): its own binary stream, rewound and moved past the header's lines, so that
        :meth:`position` keeps counting. None for stdin, which cannot be rewound, and for
        a header that a lone carriage return ends, whose lines bytes cannot count alike."""
        if self.input.path == STDIN:
            return None
        binary = self._binary
        lines = self.lines_read
        binary.seek(0)
        for _ in range(lines):
            line = binary.readline(_READ)
            if line.count(b"\r") != line.endswith(b"\r\n") or not line.endswith(b"\n"):
                # Back to where the header left the reader, for it to read the records
                # (detached, the text layer no longer closes the file when it goes).
                self._text.detach()
                binary.seek(0)
                self._open_csv()
                self._read_header()
                return None
        return binary

    def close(self) -> None:
        self._binary.close()

    @property
    def line(self) -> int | None:
        """The line the reading has come to: between reads, the next one to read."""
        return self._line

    def spans(self, every: int) -> list[Span] | None:
        """An uncompressed file's lines in spans of about ``every`` bytes, each ending
        where a line starts, their line numbers unknown (0). None for any other input,
        and for one span."""
        if self._size is None or self.input.gzip or self._size <= every:
            return None
        fileno = self.fileno()
        starts = [0]
        at = every
        while at < self._size:
            # The byte before ``at`` may be the break that ends a line there.
            window = os.pread(fileno, _SPAN_LOOK, at - 1)
            if not window:
                break
            found = window.find(b"\n")
            if found < 0:
                at += len(window)
                continue
            start = at + found
            if start >= self._size:
                break
            starts.append(start)
            at = start + every
        if len(starts) == 1:
            return None
        return [Span(a, b, 0) for a, b in zip(starts, [*starts[1:], None], strict=True)]

    def identity(self) -> tuple[int, ...] | None:
        """The file's device, inode, size (as opened) and modification time; None for
        stdin."""
        if self._size is None:
            return None
        info = os.fstat(self.fileno())
        return (info.st_dev, info.st_ino, self._size, info.st_mtime_ns)

    def fileno(self) -> int:
        """The file's descriptor, for reads by position (``os.pread``)."""
        return self._stored.fileno()

    def position(self) -> tuple[int, int] | None:
        """(bytes read, size) of the file as stored; None for stdin, whose size is unknown."""
        if self._size is None:
            return None
        try:
            return min(self._stored.tell(), self._size), self._size
        except (OSError, ValueError):  # closed: read to its end
            return self._size, self._size

    def __iter__(self) -> Iterator[Record]:
        try:
            if self.input.format is Format.CSV:
                yield from self._csv_records()
            else:
                yield from self._ndjson_records()
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(self.input.name, describe(exc), self._line) from exc

    def _read_header(self) -> tuple[str, ...]:
        # csv's own field limit (128 KiB by default, and process-wide) must not be the one
        # that stops a record: MAX_ROW_BYTES does, and reads on.
        csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
        name = self.input.name
        rows = self._rows
        lines = self._lines
        header: list[str] | None = []
        end = 0
        # Blank lines before the header are skipped: the first non-blank line names the
        # columns. A byte-order mark alone on the first line is a blank line too.
        while header is not None and not "".join(header).removeprefix(_BOM * (end <= 1)).strip():
            start = end + 1
            try:
                header = next(rows, None)
            except (EOFError, OSError, zlib.error, csv.Error) as exc:
                raise InputError(name, describe(exc), start) from exc
            lines.record = 0
            end = rows.line_num + lines.skew
        if header is None:
            return ()
        if header[-1] == _OVERSIZED:
            raise InputError(name, f"header {lines.oversized()}", start)
        if len(header) > MAX_COLUMNS:
            raise InputError(
                name,
                f"header has {len(header)} columns, more than the limit of {MAX_COLUMNS}",
                start,
            )
        if header[0].startswith(_BOM):
            header[0] = header[0][len(_BOM) :]
        names = tuple(column.strip() for column in header)
        if any(_has_surrogates(column) for column in names):
            raise InputError(name, f"header is not valid UTF-8{_encoding_hint(header[0])}", start)
        seen: dict[str, int] = {}
        for index, column in enumerate(names, start=1):
            if not column:
                raise InputError(name, f"header column {index} has no name", start)
            if column in seen:
                raise InputError(
                    name,
                    f"header names column {column!r} twice (columns {seen[column]} and {index})",
                    start,
                )
            seen[column] = index
        return names

    def _csv_records(self) -> Iterator[Record]:
        name = self.input.name
        columns = self.columns
        width = len(columns)
        # A report of NDJSON rows keeps the user's keys that are no column of it as one
        # JSON object, under ``extra``: fed back, they are the row's again.
        spread = self.report and EXTRA_JSON_COLUMN in columns
        rows = self._rows
        lines = self._lines
        # csv counts the lines it was given; a skipped record was many, given as one.
        skew = lines.skew
        end = rows.line_num + skew
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
            lines.record = 0
            end = rows.line_num + skew
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            problem = None
            # Every check runs whatever the first problem was: the cells must leave here as
            # valid, bounded text, since the reports carry them.
            joined = "".join(row)
            if not joined.isascii() and _has_surrogates(joined):
                if row[-1] == _OVERSIZED:
                    skew = lines.skew
                    end = rows.line_num + skew
                    yield Record(name, start, {}, lines.oversized())
                    continue
                problem = "is not valid UTF-8"
                row = [
                    cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    for cell in row
                ]
            if len(row) > width:
                problem = f"has {len(row)} cells but the header has {width} columns"
            if self.report:
                if not problem and REPLACEMENT in joined:
                    problem = REPLACED
                row = [unneutralise(cell) for cell in row]
            fields: dict[str, object] = dict(zip(columns, row, strict=False))
            if len(row) > width:
                fields[SPILL] = row[width:]
            # No cell can be over the limit unless the whole row is.
            oversized = _clamp_oversized(fields) if len(joined) > MAX_CELL_BYTES else None
            problem = problem or oversized
            if spread:  # whatever else is wrong with the row: extra is not carried
                unspread = _spread_extra(fields)
                problem = problem or unspread
            yield Record(name, start, fields, problem)

    def _ndjson_records(self) -> Iterator[Record]:
        name = self.input.name
        for item in self.ndjson_blocks():
            if isinstance(item, Record):
                yield item
                continue
            for number, raw in enumerate(item.lines, start=item.first):
                record = ndjson_record(name, number, raw)
                if record is not None:
                    yield record

    def ndjson_blocks(
        self, size: int | None = None, span: Span | None = None
    ) -> Iterator[Lines | Record]:
        """An NDJSON input's lines, read ``size`` bytes at a time at most (by default
        NDJSON_BLOCK_BYTES), as readline would give them: a line over MAX_ROW_BYTES is
        the Record that refuses it, read to its end and not kept; the first line's BOM is
        cut off; a read that fails raises InputError naming the line it was reading,
        after the lines read whole before it. With ``span``, only its lines are read."""
        try:
            yield from self._ndjson_blocks(size or NDJSON_BLOCK_BYTES, span or Span(0, None, 1))
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(self.input.name, describe(exc), self._line) from exc

    def _ndjson_blocks(self, size: int, span: Span) -> Iterator[Lines | Record]:
        name = self.input.name
        read = self._binary.read1  # type: ignore[attr-defined]
        number = self._line = span.line  # the line that ``pending`` starts
        pending = b""
        skipped = 0  # the bytes of a line over the limit, read so far
        if span.start:
            self._binary.seek(span.start)
        left = None if span.stop is None else span.stop - span.start
        at = span.start  # where the next read starts
        while left != 0:
            data = read(size if left is None else min(size, left))
            if not data:
                break
            if left is not None:
                left -= len(data)
            begins, at = at, at + len(data)  # where ``data`` starts
            if skipped:
                end = data.find(b"\n") + 1
                if not end:
                    skipped += len(data)
                    continue
                yield Record(name, number, {}, _too_long(skipped + end, "bytes"))
                number = self._line = number + 1
                skipped = 0
                data = data[end:]
                begins += end
                if not data:
                    continue
            if pending:
                data = pending + data
                begins -= len(pending)
            ended = data.rfind(b"\n") + 1
            pending = data[ended:]
            if ended:
                whole = data[:ended] if pending else data
                lines = Lines(number, whole, data.count(b"\n"), begins)
                yield from self._ndjson_lines(lines)
                number = self._line = number + lines.count
            if len(pending) > MAX_ROW_BYTES:
                skipped, pending = len(pending), b""
        if left == 0 and (skipped or pending):
            # The span ended where a line started when it was chosen.
            raise ChangedWhileRead(
                f"changed while it was read (a line ran on past byte {span.stop:,})"
            )
        if skipped:
            yield Record(name, number, {}, _too_long(skipped, "bytes"))
        elif pending:
            yield from self._ndjson_lines(Lines(number, pending, 1, at - len(pending)))

    def _ndjson_lines(self, read: Lines) -> Iterator[Lines | Record]:
        """``read``, its first line's BOM cut off, and each line over the limit as its
        Record."""
        first, data = read.first, read.data
        if first == 1 and data.startswith(_BOM_BYTES):
            end = data.find(b"\n") + 1 or len(data)
            if end <= MAX_ROW_BYTES:
                read = Lines(first, data[len(_BOM_BYTES) :], read.count, read.at + len(_BOM_BYTES))
        if read.within(MAX_ROW_BYTES):
            yield read
            return
        lines, ats = read.lines, read.ats()
        start = 0
        for i, line in enumerate(lines):
            if len(line) > MAX_ROW_BYTES:
                if start < i:
                    yield Lines.of(first + start, lines[start:i], ats[start])
                yield Record(self.input.name, first + i, {}, _too_long(len(line), "bytes"))
                start = i + 1
        if start < len(lines):
            yield Lines.of(first + start, lines[start:], ats[start])


# What a file that is not UTF-8 text most often is, by its first bytes (as the header's
# first cell holds them, undecodable bytes as surrogates).
_NOT_UTF8: Final = (
    ("\udcff\udcfe", "it looks like UTF-16: save it as UTF-8"),
    ("\udcfe\udcff", "it looks like UTF-16: save it as UTF-8"),
    ("\x1f\udc8b", "it looks gzip-compressed: name it .csv.gz"),
)


def _encoding_hint(first: str) -> str:
    return next((f" ({hint})" for start, hint in _NOT_UTF8 if first.startswith(start)), "")


class Span(NamedTuple):
    """Lines of a file from byte ``start`` (where line ``line`` starts) to byte ``stop``
    (where a line starts; None: the end)."""

    start: int
    stop: int | None
    line: int


class Lines:
    """Consecutive lines of an NDJSON input, each with its line break (the input's last
    may have none): ``first`` is the first one's number, ``data`` all of them joined,
    ``count`` how many, ``at`` the byte of the input where they start. They are split into
    ``lines`` when first asked for: the fast lane decodes a read of fast rows whole, and
    plans it without them."""

    __slots__ = ("_lines", "at", "count", "data", "first")

    def __init__(self, first: int, data: bytes, count: int, at: int) -> None:
        self.first = first
        self.data = data
        self.count = count
        self.at = at
        self._lines: list[bytes] | None = None

    @classmethod
    def of(cls, first: int, lines: list[bytes], at: int) -> Lines:
        made = cls(first, b"".join(lines), len(lines), at)
        made._lines = lines
        return made

    def ats(self) -> list[int]:
        """The byte of the input where each line starts."""
        return list(accumulate(map(len, self.lines[:-1]), initial=self.at))

    @property
    def lines(self) -> list[bytes]:
        if self._lines is None:
            self._lines = _split_lines(self.data)
        return self._lines

    def within(self, limit: int) -> bool:
        """Whether no line is over ``limit`` bytes. Each line break is looked for back
        from where a line would be too long: a few times over a read, where splitting it
        would make every line."""
        data, start = self.data, 0
        while len(data) - start > limit:
            end = data.rfind(b"\n", start, start + limit)
            if end < 0:
                return False
            start = end + 1
        return True


def _split_lines(data: bytes) -> list[bytes]:
    """``data``'s lines, each with its break."""
    # splitlines breaks at a lone CR too, which does not end an NDJSON line.
    if b"\r" not in data or data.count(b"\r") == data.count(b"\r\n"):
        return data.splitlines(keepends=True)
    *ended, last = data.split(b"\n")
    lines = [line + b"\n" for line in ended]
    if last:
        lines.append(last)
    return lines


def ndjson_record(name: str, number: int, raw: bytes) -> Record | None:
    """The record of one NDJSON line (of at most MAX_ROW_BYTES), or None for a blank one."""
    # isspace() allocates nothing, where strip() copies the line.
    if raw.isspace() or not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting past 1024 levels with its own words; say it in ours.
        deep = str(exc).startswith("depth limit")
        return Record(name, number, {}, _TOO_DEEP if deep else f"is not valid JSON: {exc}")
    if not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        return Record(name, number, {}, f"is a JSON {_JSON_KINDS.get(kind, kind)}, not an object")
    # A flat row has no "[" and one "{", which memchr tells at once (a byte value is looked
    # for several times faster than a one-byte string, or than find()); a row with nesting
    # is walked only if it has brackets enough to nest too deep.
    if (
        _nested(raw)
        and raw.count(_OPEN_OBJECT) + raw.count(_OPEN_ARRAY) > MAX_DEPTH
        and _deeper(value, MAX_DEPTH)
    ):
        flat = {k: v for k, v in value.items() if type(v) is not dict and type(v) is not list}
        return Record(name, number, flat, _TOO_DEEP)
    if not RESERVED.isdisjoint(value) and not is_report(value):
        renamed = {own_column(key): cell for key, cell in value.items()}
        if len(renamed) < len(value):
            names = list(map(own_column, value))
            # The row as given but for the name two keys would take, which neither may.
            kept = {k: v for k, v in renamed.items() if names.count(k) == 1}
            return Record(name, number, kept, f"keys {name_clash(list(value), names)}")
        value = renamed
    spill = value.get(SPILL)
    if spill and not isinstance(spill, list):
        spill = value[SPILL] = [spill]  # edited by hand: one cell
    problem = _clamp_oversized(value) if len(raw) > MAX_CELL_BYTES else None
    if not problem and _REPLACEMENT_BYTES in raw and is_report(value):
        problem = REPLACED
    if spill and not problem:
        # A ragged CSV row, fed back from an NDJSON report (a user's own key of that name
        # was renamed above): refused as it was, never landed without the cells it had.
        problem = (
            f"had {len(spill)} cell(s) past its CSV header, kept under {SPILL}: "
            f"fix the row and take the key out"
        )
    return Record(name, number, value, problem)


# What a report writes for bytes of a row that were not UTF-8: fed back, a row holding it
# is refused, or the stand-in would land in place of what the bytes were.
REPLACEMENT: Final = "\ufffd"
_REPLACEMENT_BYTES: Final = REPLACEMENT.encode()
REPLACED: Final = (
    "holds U+FFFD, which a report writes for bytes that were not UTF-8: fix the row from its source"
)


def name_clash(names: Sequence[str], renamed: Sequence[str]) -> str | None:
    """How two of a user's column names would be reported under one name (``source`` and
    ``user.source`` are both ``user.source``), ``renamed`` being how each is reported; None
    when none would."""
    seen: dict[str, str] = {}
    for name, new in zip(names, renamed, strict=True):
        if new in seen:
            return f"{seen[new]!r} and {name!r} would both be reported as {new!r}; rename one"
        seen[new] = name
    return None


def _nested(raw: bytes) -> bool:
    """Whether an NDJSON line may hold an array or an object inside its own object."""
    return _OPEN_ARRAY in raw or _OPEN_OBJECT in raw[1:]


_JSON_KINDS: Final = {
    "list": "array",
    "str": "string",
    "int": "number",
    "float": "number",
    "bool": "boolean",
}


class _Lines:
    """The physical lines of a CSV text, for csv.reader, never more than one row's worth.

    csv.reader holds a record until it ends, so a record is cut off here once it passes
    MAX_ROW_BYTES: the rest of it is read to its end without being kept, and csv.reader is
    given one placeholder line for all of it, whose last cell is ``_OVERSIZED``. Lines are
    read with a bounded ``readline``, so a line without a break is never held whole.

    The reader sets ``record`` to 0 whenever csv.reader ends a record, so ``record`` is
    what csv.reader holds of the one it is in: where records end is csv's own decision.
    """

    __slots__ = ("_readline", "_size", "record", "skew")

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._readline = text.readline
        self.record = 0
        # Lines read beyond the ones csv.reader was given (it counts a placeholder as one).
        self.skew = 0
        self._size = 0

    def oversized(self) -> str:
        """Why the last record cut off was refused."""
        return _too_long(self._size, "characters")

    def __iter__(self) -> Iterator[str]:
        readline = self._readline
        line = readline(_READ)
        while line:
            size = self.record + len(line)
            if size <= MAX_ROW_BYTES:
                self.record = size
                yield line
                line = readline(_READ)
            else:
                line = yield from self._skip(line)

    def _skip(self, chunk: str) -> Generator[str, None, str]:
        """Read the record that ``chunk`` takes over the limit to its end, keeping none of it;
        give csv.reader a placeholder for it; return the line after it."""
        readline = self._readline
        # A record goes on past a line break only inside a quoted field.
        state = _QUOTED if self.record else _FIELD_START
        size = self.record
        lines = 0
        while chunk:
            size += len(chunk)
            state = _scan(chunk, state)
            following = readline(_READ)
            if chunk[-1] == "\r" and following == "\n":  # a CRLF cut in two by the read limit
                size += 1
                following = readline(_READ)
            if chunk[-1] in "\r\n":
                lines += 1
                if state == _END:
                    break
            chunk = following
        else:
            if state == _QUOTED:
                # What csv.reader says when the input ends inside a quoted field.
                raise csv.Error("unexpected end of data")
        self._size = size
        self.skew += lines - 1
        # Inside a quoted field, a closing quote first, so the placeholder cell is its own.
        yield f'",{_OVERSIZED}\n' if self.record else f"{_OVERSIZED}\n"
        return following


# csv.reader's states inside a record (the default dialect), and _END: the record ended at
# the line break that ends the text scanned.
_FIELD_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED, _END = range(5)
_UNQUOTED_RE: Final = re.compile(r"[^,\r\n]*+")
_QUOTED_RE: Final = re.compile(r'[^"]*+(?:""[^"]*+)*+')
_FIELDS_RE: Final = re.compile(r'(?>(?:"[^"]*+(?:""[^"]*+)*+"|[^",\r\n][^,\r\n]*+)?,)*+')


def _scan(text: str, state: int) -> int:
    """csv.reader's state after reading ``text``, part of one record, from ``state``.

    Whole runs of fields are taken by one regular expression, so a record of a gigabyte
    is scanned at the speed of C. Where strict csv.reader would stop at a character after
    a closing quote, this reads on as the lenient parser does: it only reads records that
    are refused anyway, and reading on keeps the rows after them.
    """
    position, length = 0, len(text)
    while position < length:
        if state == _QUOTED:
            position = _end_of(_QUOTED_RE, text, position)
            if position == length:
                break
            position += 1
            state = _QUOTE_IN_QUOTED
        elif state == _QUOTE_IN_QUOTED:
            if text[position] == '"':
                position += 1
                state = _QUOTED
            else:
                state = _UNQUOTED
        elif state == _UNQUOTED:
            position = _end_of(_UNQUOTED_RE, text, position)
            if position == length:
                break
            if text[position] != ",":
                return _END
            position += 1
            state = _FIELD_START
        else:
            position = _end_of(_FIELDS_RE, text, position)
            if position == length:
                break
            if text[position] == '"':
                position += 1
                state = _QUOTED
            else:
                state = _UNQUOTED
    return state


def _end_of(pattern: re.Pattern[str], text: str, position: int) -> int:
    """Where ``pattern``, which also matches nothing, stops matching from ``position``."""
    match = pattern.match(text, position)
    assert match is not None
    return match.end()


def _too_long(size: int, unit: str) -> str:
    return f"is {size} {unit}, more than the row limit of {MAX_ROW_BYTES}"


_TOO_DEEP: Final = f"nests deeper than the limit of {MAX_DEPTH} levels"
# A named input is read more than once (hashed for --resume, read again from its first
# row by the fast lane): a pipe or a device would give each read part of its bytes.
NOT_A_FILE: Final = (
    "is not a regular file (a pipe or a device: it can be read only once); give it on "
    "stdin as - (with --format), or save it to a file first"
)
_OPEN_ARRAY: Final = ord("[")
_OPEN_OBJECT: Final = ord("{")


def _deeper(value: dict[str, object], limit: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` levels deep, itself the
    first. Only arrays and objects are walked into, a level at a time."""
    level: list[dict[str, object] | list[object]] = [value]
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


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

    def fraction(self) -> float | None:
        """How much of the inputs has been read, by their stored bytes; None with stdin."""
        positions = [reader.position() for reader in self._readers]
        if any(found is None for found in positions):
            return None
        done = sum(found[0] for found in positions if found)
        size = sum(found[1] for found in positions if found)
        return done / size if size else 1.0


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


def _open_binary(source: Input) -> tuple[IO[bytes], int | None]:
    """The input's bytes (decompressed), and the size of the file as stored."""
    size: int | None = None
    try:
        if source.path == STDIN:
            raw: IO[bytes] = sys.stdin.buffer
        else:
            file = open(source.path, "rb", buffering=0)  # noqa: SIM115
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                file.close()
                raise InputError(source.name, NOT_A_FILE)
            size = info.st_size
            raw = io.BufferedReader(_Unchanged(file, size))
    except OSError as exc:
        raise InputError(source.name, describe(exc)) from exc
    if source.gzip:
        return gzip.GzipFile(fileobj=raw, mode="rb"), size  # type: ignore[return-value]
    return raw, size


class ChangedWhileRead(OSError):
    """A file that was not, at its end, as long as when it was opened."""


class _Unchanged(io.RawIOBase):
    """A regular file's bytes, which must stay as they were when it was opened: at its end,
    a file that shrank or grew meanwhile raises ChangedWhileRead, which the readers take
    as the input breaking there. So a file rewritten under a run is not taken for whole,
    nor a line it cut short for a row: that line is still unread when its end is met."""

    def __init__(self, file: io.FileIO, size: int) -> None:
        super().__init__()
        self._file = file
        self._size = size

    def readinto(self, buffer: Any) -> int:
        read = self._file.readinto(buffer)
        if not read and len(buffer):
            at, now = self._file.tell(), os.fstat(self._file.fileno()).st_size
            if at != self._size or now != self._size:
                raise ChangedWhileRead(
                    f"changed while it was read ({self._size:,} bytes when opened, "
                    f"{now:,} at its end): run again on a file that stays as it is"
                )
        return read or 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _spread_extra(fields: dict[str, object]) -> str | None:
    """Put the keys of a fed-back report's ``extra`` cell among ``fields`` (a column of the
    same name keeps its cell); the row's problem when the cell is no JSON object."""
    text = fields.get(EXTRA_JSON_COLUMN)
    if not text:
        return None
    try:
        value = orjson.loads(str(text))
    except orjson.JSONDecodeError:
        value = None
    if type(value) is not dict:
        return f"has an {EXTRA_JSON_COLUMN} cell that is not a JSON object"
    for key, item in value.items():
        fields.setdefault(key, item)
    return None


def _clamp_oversized(fields: dict[str, object]) -> str | None:
    """Cut over-long cells down so the report stays small, and say why the row is refused."""
    problem = None
    for key, value in fields.items():
        if isinstance(value, str) and len(value) > MAX_CELL_BYTES:
            fields[key] = _clamped(value)
            problem = problem or (
                f"field {key!r} is {len(value)} characters, more than the cell limit of "
                f"{MAX_CELL_BYTES}"
            )
    spill = fields.get(SPILL)
    if isinstance(spill, list):  # a ragged row's, refused already
        fields[SPILL] = list(map(_clamped, spill))
    return problem


def _clamped(cell: object) -> object:
    if isinstance(cell, str) and len(cell) > MAX_CELL_BYTES:
        return cell[:64] + "..."
    return cell


def describe(exc: BaseException) -> str:
    """What a read error means, in a few words."""
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


def collect_less() -> None:
    """Tune the garbage collector for a command that reads an inventory (it is the shell's
    to tune).

    A run keeps every row in flight alive for a while (its entry, member, report row), so
    the default threshold (700 allocations) collected every ~60 rows and kept rescanning
    the rows waiting in batches; ``plan`` makes a few small objects a row, and spent a
    sixth of its time in collections that found nothing to free. Young collections every
    10,000 allocations stay short (a millisecond), so they hold no request back from its
    slot; the older generations, where rows in flight end up until their batch lands and
    refcounting frees them, are scanned a hundred times less often than by default. What
    exists before the run (modules, the options) lives to the end: frozen, it is never
    scanned again.
    """
    gc.freeze()
    gc.set_threshold(10_000, 100, 100)
