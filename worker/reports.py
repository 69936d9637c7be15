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
    values: dict[str, object]
    if result.outcome is Outcome.SUCCEEDED:
        values = dict(zip(LANDED_COLUMNS, landed_values(row, result), strict=True))
    else:
        values = {
            "source": row.source,
            "line": row.line,
            "outcome": result.outcome.value,
            "error_code": result.error_code,
            "error_msg": result.error_msg,
            "http_status": result.http_status,
            "attempts": result.attempts,
            "duplicate_of": result.duplicate_of,
        }
        values.update(zip(CHANNEL_FIELDS, _ids(row), strict=True))
        values.update(zip(MEMBER_FIELDS, _member_values(row), strict=True))
    values.update(carried(fields))
    return values


LANDED_COLUMNS: Final = (*LOCATION_FIELDS, *CHANNEL_FIELDS, *MEMBER_FIELDS, *SUCCESS_FIELDS)


def landed_values(row: RowInfo, result: Result) -> tuple[object, ...]:
    """A landed row's own values (the user's columns aside), in ``LANDED_COLUMNS`` order."""
    return (
        row.source, row.line, *_ids(row), *_member_values(row),
        result.member_id, result.member_group_id, result.create_time, result.attempts,
    )  # fmt: skip


def _ids(row: RowInfo) -> Iterable[object]:
    return row.channel if row.channel is not None else map(row.fields.get, CHANNEL_FIELDS)


def _member_values(row: RowInfo) -> Iterable[object]:
    return row.member.values() if row.member is not None else map(row.fields.get, MEMBER_FIELDS)


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
        "_csv_quoted",
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
        # csv quotes a cell with a line feed but not one with a lone carriage return (it is
        # not in the line terminator), and readers take that for a line break: such rows
        # are written with every cell quoted.
        self._csv_quoted = csv.writer(self._buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        self.rows = 0
        if fmt is Format.CSV and not exists:
            header = self._csv_quoted if any("\r" in name for name in self._columns) else self._csv
            header.writerow(self._columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def add(self, values: dict[str, object]) -> None:
        if self._format is Format.NDJSON:
            self.rows += 1
            self._buffer.write(orjson.dumps(values, default=str).decode())
            self._buffer.write("\n")
            self._flush_when_full()
            return
        if self._extra_json:
            leftover = {k: v for k, v in values.items() if k not in self._column_set}
            if leftover:
                values[EXTRA_JSON_COLUMN] = leftover
        self.add_cells(map(values.get, self._columns))

    def add_cells(self, values: Iterable[object]) -> None:
        """Append one CSV row: ``values`` in the order of the file's columns."""
        self.rows += 1
        # Text that cannot start a formula is most cells: kept as it is, without a call.
        cells = [
            value if type(value) is str and value[:1] not in _FORMULA_CHARS else _csv_cell(value)
            for value in values
        ]
        # Most rows need no quoting, and joined by hand they are byte for byte what csv
        # writes, at a third of the cost. A row with a comma, quote or line break in a cell
        # (or a single empty cell, which csv writes as "") goes through csv.
        line = ",".join(cells)
        if (
            line
            and line.count(",") == len(cells) - 1
            and '"' not in line
            and "\n" not in line
            and "\r" not in line
        ):
            self._buffer.write(line)
            self._buffer.write("\n")
        elif "\r" in line:
            self._csv_quoted.writerow(cells)
        else:
            self._csv.writerow(cells)
        self._flush_when_full()

    def _flush_when_full(self) -> None:
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
        self.succeeded = _Table(
            directory / f"succeeded.{suffix}", fmt, LANDED_COLUMNS, extra_columns
        )
        errors_columns = (*LOCATION_FIELDS, *ERROR_FIELDS, *CHANNEL_FIELDS, *MEMBER_FIELDS)
        self.errors = _Table(errors, fmt, errors_columns, extra_columns)
        self._extra = tuple(extra_columns)
        # Landed rows are most rows: when the succeeded file's columns are the ones chosen
        # here (not a resumed file's older header, and no ``extra`` JSON column), their
        # cells go straight from the row to the file, without a mapping in between.
        self._landed_direct = (
            fmt is Format.CSV
            and EXTRA_JSON_COLUMN not in self._extra
            and self.succeeded.columns == (*LANDED_COLUMNS, *self._extra)
        )

    def write(self, row: RowInfo, result: Result) -> None:
        if result.outcome is not Outcome.SUCCEEDED:
            self.errors.add(report_values(row, result))
        elif self._landed_direct:
            # The user's columns are never known or reserved names, so fields.get gives
            # what carried() would.
            fields = row.fields
            self.succeeded.add_cells((*landed_values(row, result), *map(fields.get, self._extra)))
        else:
            self.succeeded.add(report_values(row, result))

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
