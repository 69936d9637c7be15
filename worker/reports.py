"""Report files: one row per input row, written as results arrive, safe to read after a crash.

Each run directory holds ``succeeded.<fmt>`` and ``errors.<fmt>`` (CSV or NDJSON) and,
at the end, ``summary.json``. Rows are buffered and written with one ``write(2)`` of whole
lines per flush, on files opened in append mode: a process killed at any moment leaves
whole rows only (a torn tail can come only from a power cut, and resuming cuts it off).
A row reaches ``succeeded`` only after the API's 201 named the member. ``summary.json`` is
written to a temporary file and renamed, so it is either absent or complete.

The directory is created 0700 and the files 0600: they list internal addresses.
CSV cells that begin with ``=``, ``+``, ``-``, ``@``, tab or carriage return get a leading
``'`` so a spreadsheet shows them as text instead of running them as formulas.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from worker.inventory import Format
from worker.members import CHANNEL_FIELDS, MEMBER_FIELDS, Channel, Member
from worker.outcomes import Outcome, Result

SUCCESS_FIELDS: Final = ("member_id", "member_group_id", "create_time", "attempts")
ERROR_FIELDS: Final = (
    "outcome",
    "error_code",
    "error_msg",
    "http_status",
    "attempts",
    "duplicate_of",
)
LOCATION_FIELDS: Final = ("source", "line")
EXTRA_JSON_COLUMN: Final = "extra"
# Columns the reports write. When a report is fed back as an input these are not carried
# through again, so errors.csv can be fixed up and re-run as it is.
RESERVED: Final = frozenset((*LOCATION_FIELDS, *SUCCESS_FIELDS, *ERROR_FIELDS, EXTRA_JSON_COLUMN))
KNOWN: Final = frozenset((*CHANNEL_FIELDS, *MEMBER_FIELDS))
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_CHARS: Final = frozenset("=+-@\t\r'")
_FLUSH_BYTES: Final = 64 * 1024


@dataclass(slots=True)
class RowInfo:
    """What a report says about an input row besides its result (treated as immutable; one
    is built per row, and a frozen dataclass costs several times as much to build)."""

    source: str
    line: int
    fields: Mapping[str, object]
    channel: Channel | None = None
    member: Member | None = None


_NOT_CARRIED: Final = KNOWN | RESERVED


def carried(fields: Mapping[str, object]) -> dict[str, object]:
    """The columns of a row that are the user's own, carried through to the reports."""
    return {k: v for k, v in fields.items() if k not in _NOT_CARRIED}


def report_values(row: RowInfo, result: Result) -> dict[str, object]:
    """A report row as an ordered mapping: location, outcome, channel, member, extras.

    Built once per input row, so it is assembled from tuples in one go rather than
    field by field.
    """
    fields = row.fields
    ids = row.channel if row.channel is not None else tuple(map(fields.get, CHANNEL_FIELDS))
    member = row.member.values() if row.member is not None else map(fields.get, MEMBER_FIELDS)
    values: dict[str, object] = {"source": row.source, "line": row.line}
    if result.outcome is Outcome.SUCCEEDED:
        values.update(zip(CHANNEL_FIELDS, ids, strict=True))
        values.update(zip(MEMBER_FIELDS, member, strict=True))
        values["member_id"] = result.member_id
        values["member_group_id"] = result.member_group_id
        values["create_time"] = result.create_time
        values["attempts"] = result.attempts
    else:
        values["outcome"] = result.outcome.value
        values["error_code"] = result.error_code
        values["error_msg"] = result.error_msg
        values["http_status"] = result.http_status
        values["attempts"] = result.attempts
        values["duplicate_of"] = result.duplicate_of
        values.update(zip(CHANNEL_FIELDS, ids, strict=True))
        values.update(zip(MEMBER_FIELDS, member, strict=True))
    values.update(carried(fields))
    return values


def neutralise(cell: str) -> str:
    # Leading quotes are looked past so that a cell already starting with "'=" gets one more
    # quote too; otherwise unneutralise could not tell it from a neutralised "=".
    return "'" + cell if cell.lstrip("'").startswith(_FORMULA_START) else cell


def unneutralise(cell: str) -> str:
    quoted = cell.startswith("'") and cell.lstrip("'").startswith(_FORMULA_START)
    return cell[1:] if quoted else cell


def _csv_cell(value: object) -> str:
    # Written for every cell of every row: the common cases come first and cheaply.
    kind = type(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
        return neutralise(text) if text and text[0] in _FORMULA_CHARS else text
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value) if value >= 0 else neutralise(str(value))  # type: ignore[operator]
    return neutralise(orjson.dumps(value).decode())


class _Table:
    """One report file: rows buffered and appended with one write of whole lines."""

    __slots__ = (
        "_buffer",
        "_column_set",
        "_columns",
        "_csv",
        "_extra_json",
        "_fd",
        "_format",
        "path",
        "rows",
    )

    def __init__(
        self, path: Path, fmt: Format, columns: Sequence[str], extra_columns: Sequence[str]
    ) -> None:
        self.path = path
        self._format = fmt
        self._columns = (*columns, *extra_columns)
        exists = path.exists() and path.stat().st_size > 0
        if exists and fmt is Format.CSV:
            # Appending (a resumed run): keep the file's own header, or a change in the
            # user's columns would shift every later row against it.
            with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
                self._columns = tuple(next(csv.reader(handle), self._columns))
        self._column_set = frozenset(self._columns)
        self._extra_json = EXTRA_JSON_COLUMN in self._columns
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        self.rows = 0
        if fmt is Format.CSV and not exists:
            self._csv.writerow(self._columns)

    def add(self, values: dict[str, object]) -> None:
        self.rows += 1
        if self._format is Format.NDJSON:
            self._buffer.write(orjson.dumps(values, default=str).decode())
            self._buffer.write("\n")
        else:
            if self._extra_json:
                leftover = {k: v for k, v in values.items() if k not in self._column_set}
                if leftover:
                    values[EXTRA_JSON_COLUMN] = leftover
            self._csv.writerow([_csv_cell(value) for value in map(values.get, self._columns)])
        if self._buffer.tell() >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        data = self._buffer.getvalue()
        if data:
            self._buffer.seek(0)
            self._buffer.truncate()
            os.write(self._fd, data.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


class ReportWriter:
    """The two report files of a run directory.

    ``extra_columns`` are the user's own columns, known from the CSV headers before any row
    is read; in CSV reports, other carried values go into one ``extra`` column as JSON.
    With ``resume`` the existing ``succeeded`` file is kept and appended to, and ``errors``
    starts afresh, since every row that has not landed is processed again.
    """

    def __init__(
        self, directory: Path, fmt: Format, extra_columns: Sequence[str], *, resume: bool = False
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        suffix = fmt.value
        errors = directory / f"errors.{suffix}"
        if resume or errors.exists():
            errors.unlink(missing_ok=True)
        base = (*LOCATION_FIELDS,)
        channel_member = (*CHANNEL_FIELDS, *MEMBER_FIELDS)
        self.succeeded = _Table(
            directory / f"succeeded.{suffix}",
            fmt,
            (*base, *channel_member, *SUCCESS_FIELDS),
            extra_columns,
        )
        self.errors = _Table(errors, fmt, (*base, *ERROR_FIELDS, *channel_member), extra_columns)

    def write(self, row: RowInfo, result: Result) -> None:
        table = self.succeeded if result.outcome is Outcome.SUCCEEDED else self.errors
        table.add(report_values(row, result))

    def flush(self) -> None:
        self.succeeded.flush()
        self.errors.flush()

    def close(self) -> None:
        self.succeeded.close()
        self.errors.close()

    @property
    def paths(self) -> list[Path]:
        return [self.succeeded.path, self.errors.path]


def landed_rows(directory: Path, fmt: Format) -> set[tuple[str, int]]:
    """(source, line) of every row an earlier run in ``directory`` reported landed.

    A torn last line (from a power cut mid-write) is cut off the file first: that row did
    not count as landed, so it will be sent again, which the upsert makes harmless.
    """
    path = directory / f"succeeded.{fmt.value}"
    if not path.exists():
        return set()
    _cut_torn_tail(path)
    landed: set[tuple[str, int]] = set()
    with path.open("rb") as handle:
        if fmt is Format.NDJSON:
            for raw in handle:
                record = orjson.loads(raw)
                landed.add((str(record["source"]), int(record["line"])))
        else:
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
            for record in csv.DictReader(text):
                landed.add((unneutralise(record["source"]), int(record["line"])))
    return landed


def _cut_torn_tail(path: Path) -> None:
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        keep = size
        while keep > 0:
            step = min(keep, 64 * 1024)
            handle.seek(keep - step)
            chunk = handle.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = keep - step + cut + 1
                break
            keep -= step
        handle.truncate(keep)


def write_json_atomic(path: Path, data: Mapping[str, object]) -> None:
    """Write ``path`` whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def extra_columns(headers: Iterable[Sequence[str]], any_ndjson: bool) -> list[str]:
    """The user's own columns over all CSV headers, in first-seen order (+ ``extra``)."""
    seen: dict[str, None] = {}
    for header in headers:
        for name in header:
            if name not in KNOWN and name not in RESERVED:
                seen.setdefault(name)
    columns = list(seen)
    if any_ndjson:
        columns.append(EXTRA_JSON_COLUMN)
    return columns
