"""Report files: one row per input row, written as results arrive, safe to read after a crash.

Each run directory holds ``succeeded.<fmt>`` and ``errors.<fmt>`` (CSV or NDJSON) and,
at the end, ``summary.json``. Rows are buffered and written with one ``write(2)`` of whole
lines per flush, on files opened in append mode: a process killed at any moment leaves
whole rows only (a torn tail can come only from a power cut, and resuming cuts it off).
A row reaches ``succeeded`` only after the API's 201 named the member. ``summary.json`` is
written to a temporary file and renamed, so it is either absent or complete.

A write that fails (a full disk, a file-size limit, an I/O error) raises
:class:`ReportsUnwritable` naming the file; what was not written stays buffered, so nothing
already written is lost and nothing is written twice. Files are opened without following
symbolic links, and a new run's files must not exist yet.

The directory is created 0700 and the files 0600: they list internal addresses.
CSV cells (header cells included) that begin with ``=``, ``+``, ``-``, ``@``, tab or carriage
return get a leading ``'`` so a spreadsheet shows them as text instead of running them as
formulas.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import IO, Final, Protocol, cast

import orjson

from worker.config import Format
from worker.members import CHANNEL_FIELDS, MEMBER_FIELDS, Channel, Member, member_key
from worker.outcomes import Action, Fate, Outcome, Result

SUCCESS_FIELDS: Final = ("action", "member_id", "member_group_id", "create_time", "attempts")
ERROR_FIELDS: Final = (
    "outcome",
    "error_code",
    "error_msg",
    "http_status",
    "attempts",
    "duplicate_of",
    "request_id",
)
# The live members a sync found that the inventory does not name (``extras.<fmt>``).
LIVE_FIELDS: Final = (*MEMBER_FIELDS, "member_id", "member_group_id", "create_time")
EXTRA_FIELDS: Final = ("fate", "reason", "reason_msg", "http_status", "attempts", "request_id")
EXTRAS_COLUMNS: Final = (*CHANNEL_FIELDS, *LIVE_FIELDS, *EXTRA_FIELDS)
LOCATION_FIELDS: Final = ("source", "line")
EXTRA_JSON_COLUMN: Final = "extra"
# The cells of a CSV row past its header's width: a CSV report writes them after the
# row's columns, so that the row, fed back unfixed, is as ragged as it was (and refused
# again, never landed with cells cut); an NDJSON report, as a list under this key.
SPILL: Final = "cells_past_header"
# Columns the reports write. When a report is fed back as an input these are not carried
# through again, so errors.csv can be fixed up and re-run as it is.
RESERVED: Final = frozenset(
    (*LOCATION_FIELDS, *SUCCESS_FIELDS, *ERROR_FIELDS, EXTRA_JSON_COLUMN, SPILL)
)
# A user's own column that bears a reserved name is carried under this prefix instead.
USER_PREFIX: Final = "user."
KNOWN: Final = frozenset((*CHANNEL_FIELDS, *MEMBER_FIELDS))
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
FORMULA_CHARS: Final = frozenset("=+-@\t\r'")
_FLUSH_BYTES: Final = 64 * 1024
# Rows of a report read back: each with the text it was read from.
Records = list[tuple[str, dict[str, object]]]


@dataclass(slots=True)
class RowInfo:
    """What a report says about an input row besides its result (treated as immutable but
    for ``settled``, which the ledger sets once; one is built per row, and a frozen
    dataclass costs several times as much to build)."""

    source: str
    line: int
    fields: Mapping[str, object]
    channel: Channel | None = None
    member: Member | None = None
    settled: bool = False


class ReportsUnwritable(Exception):
    """A report file could not be written: the message names the file and the error."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        self.error = error
        super().__init__(f"{path}: {error.strerror or error}")


_NOT_CARRIED: Final = KNOWN | RESERVED
# What makes a header (or an NDJSON row) one of this tool's own reports, fed back: every
# column a report of errors (or of landed rows) writes, not just a few common names.
_SIGNATURES: Final = (
    frozenset((*LOCATION_FIELDS, *ERROR_FIELDS)),
    frozenset((*LOCATION_FIELDS, *SUCCESS_FIELDS)),
)


def is_report(columns: Iterable[str]) -> bool:
    """Whether these columns are those of a report this tool wrote (``errors.csv`` fed back
    as an input)."""
    names = set(columns)
    return any(signature <= names for signature in _SIGNATURES)


def own_column(name: str) -> str:
    """A user's column as reports carry it: under ``user.`` when its name is one the
    reports write themselves, so it is kept, not dropped."""
    return USER_PREFIX + name if name in RESERVED else name


def carried(fields: Mapping[str, object]) -> dict[str, object]:
    """The columns of a row that are the user's own, carried through to the reports."""
    return {k: v for k, v in fields.items() if k not in _NOT_CARRIED}


def landed_shape(result: Result) -> bool:
    """Whether a row's report is a landed row's: one that landed, or a dry run's that
    would (pending, with its action). A row held back for a reason (pending too: a guard
    kept its channel from being written) is reported with the reason, as errors are."""
    outcome = result.outcome
    return outcome is Outcome.SUCCEEDED or (outcome is Outcome.PENDING and not result.error_code)


def report_values(row: RowInfo, result: Result) -> dict[str, object]:
    """A report row as an ordered mapping: location, outcome, channel, member, extras.

    Built once per input row, so it is assembled from tuples in one go rather than
    field by field.
    """
    fields = row.fields
    values: dict[str, object]
    if landed_shape(result):
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
            "request_id": result.request_id,
        }
        values.update(zip(CHANNEL_FIELDS, _ids(row), strict=True))
        values.update(zip(MEMBER_FIELDS, _member_values(row), strict=True))
    values.update(carried(fields))
    spill = fields.get(SPILL)
    if spill:  # a list: the readers make it one
        values[SPILL] = spill
    return values


LANDED_COLUMNS: Final = (*LOCATION_FIELDS, *CHANNEL_FIELDS, *MEMBER_FIELDS, *SUCCESS_FIELDS)


def landed_values(row: RowInfo, result: Result) -> tuple[object, ...]:
    """A landed row's own values (the user's columns aside), in ``LANDED_COLUMNS`` order."""
    return (
        row.source, row.line, *_ids(row), *_member_values(row), result.action,
        result.member_id, result.member_group_id, result.create_time, result.attempts,
    )  # fmt: skip


class Plain(Protocol):
    """A row whose landed report row was made in advance but for the answer's cells."""

    head: str
    tail: str
    attempts: int
    action: Action
    settled: bool


def landed_lines(
    fmt: Format,
    rows: Sequence[Plain],
    ids: Sequence[str],
    groups: Sequence[str | None],
    times: Sequence[str | None],
) -> str | None:
    """The landed report rows of ``rows``, as ``ReportWriter.write`` writes them in ``fmt``,
    given the answer's member id, group id and creation time of each: ``head`` (the row up
    to ``action``), the result, then ``tail``. In CSV the head ends before a comma and the
    tail starts with one; in NDJSON the head is the object without its closing brace, and
    the tail ends with it. None when an answer's text needs quoting (CSV) or escaping
    (JSON), which the writer itself then does, row by row."""
    columns = (ids, [group or "" for group in groups], [time or "" for time in times])
    answer = "".join(["".join(column) for column in columns])
    if fmt is Format.NDJSON:
        if JSON_ESCAPED.search(answer):
            return None
        # None of the answer's texts needs an escape: each is written as orjson would,
        # between quotes.
        action, member, group, created, attempts = _ANSWER_NAMES
        return "".join(
            [
                f'{row.head},{action}{_ACTION_JSON[row.action]},{member}"{i}",{group}"{g}",'
                f'{created}"{t}",{attempts}{row.attempts}{row.tail}\n'
                for row, i, g, t in zip(rows, *columns, strict=True)
            ]
        )
    if "," in answer or '"' in answer or "\n" in answer or "\r" in answer:
        return None
    cells = [
        [cell if cell[:1] not in FORMULA_CHARS else csv_cell(cell) for cell in column]
        for column in columns
    ]
    actions = _ACTION_CELLS
    return "".join(
        [
            f"{row.head},{actions[row.action]},{i},{g},{t},{row.attempts}{row.tail}\n"
            for row, i, g, t in zip(rows, *cells, strict=True)
        ]
    )


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


def csv_cell(value: object) -> str:
    """A value as its report cell's text, neutralised (the fast lane makes its cells so)."""
    # Written for every cell of every row: the common cases come first and cheaply.
    kind = type(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
        return neutralise(text) if text and text[0] in FORMULA_CHARS else text
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value) if value >= 0 else neutralise(str(value))  # type: ignore[operator]
    if isinstance(value, str):  # the outcome names (StrEnum)
        return csv_cell(str(value))
    return neutralise(orjson.dumps(value).decode())


_ACTION_CELLS: Final = {action: csv_cell(action) for action in Action}
_ACTION_JSON: Final = {action: orjson.dumps(action).decode() for action in Action}
# The names of the result's members in a landed NDJSON row, in SUCCESS_FIELDS order, as
# orjson writes them, each before its value: ``"action":``, ``"member_id":``, ...
_ANSWER_NAMES: Final = tuple(f"{orjson.dumps(name).decode()}:" for name in SUCCESS_FIELDS)
# What orjson writes escaped in a string (and a lone surrogate, which it refuses).
JSON_ESCAPED: Final = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')


def _open_new(path: Path) -> int:
    """Create ``path`` for appending; fails if it exists, or is a symbolic link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW, 0o600)


def _open_existing(path: Path) -> int:
    """Open ``path`` for appending (creating it if absent), never through a symbolic link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)


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
        "_unwritten",
        "path",
        "rows",
    )

    def __init__(
        self,
        path: Path,
        fmt: Format,
        columns: Sequence[str],
        extra_columns: Sequence[str],
        *,
        append: bool = False,
    ) -> None:
        self.path = path
        self._format = fmt
        self._columns = (*columns, *extra_columns)
        self._fd = _open_existing(path) if append else _open_new(path)
        exists = append and os.fstat(self._fd).st_size > 0
        if exists and fmt is Format.CSV:
            # Appending (a resumed run): keep the file's own header, or a change in the
            # user's columns would shift every later row against it.
            self._columns = _read_header(path) or self._columns
        self._column_set = frozenset(self._columns)
        self._extra_json = EXTRA_JSON_COLUMN in self._columns
        self._buffer = io.StringIO()
        self._unwritten = b""
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        # csv quotes a cell with a line feed but not one with a lone carriage return (it is
        # not in the line terminator), and readers take that for a line break: such rows
        # are written with every cell quoted.
        self._csv_quoted = csv.writer(self._buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        self.rows = 0
        if fmt is Format.CSV and not exists:
            self.add_cells(self._columns, count=False)

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
        spill = values.pop(SPILL, ())
        if self._extra_json:
            leftover = {k: v for k, v in values.items() if k not in self._column_set}
            if leftover:
                values[EXTRA_JSON_COLUMN] = leftover
        self.add_cells(chain(map(values.get, self._columns), cast("list[str]", spill)))

    def add_cells(self, values: Iterable[object], *, count: bool = True) -> None:
        """Append one CSV row: ``values`` in the order of the file's columns."""
        self.rows += count
        # Text that cannot start a formula is most cells: kept as it is, without a call.
        cells = [
            value if type(value) is str and value[:1] not in FORMULA_CHARS else csv_cell(value)
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

    def add_lines(self, text: str, count: int) -> None:
        """Append ``count`` CSV rows already written out (whole lines)."""
        self.rows += count
        self._buffer.write(text)
        self._flush_when_full()

    def _flush_when_full(self) -> None:
        if self._buffer.tell() >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row; raises ReportsUnwritable, keeping what was not written."""
        if self._buffer.tell():
            data = self._buffer.getvalue().encode("utf-8", "surrogateescape")
            self._buffer.seek(0)
            self._buffer.truncate()
            self._unwritten = self._unwritten + data if self._unwritten else data
        pending = memoryview(self._unwritten)
        try:
            while pending:
                # A short write (a disk filling up) leaves the rest to write again.
                pending = pending[os.write(self._fd, pending) :]
        except OSError as exc:
            self._unwritten = bytes(pending)
            raise ReportsUnwritable(self.path, exc) from None
        self._unwritten = b""

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self._fd)


def _read_header(path: Path) -> tuple[str, ...] | None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        header = next(csv.reader(handle), None)
    return tuple(map(unneutralise, header)) if header else None


class ReportWriter:
    """The report files of a run directory.

    ``extra_columns`` are the user's own columns, known from the CSV headers before any row
    is read; in CSV reports, other carried values go into one ``extra`` column as JSON.
    With ``resume`` the existing ``succeeded`` file is kept and appended to, and ``errors``
    starts afresh, since every row that has not landed is processed again; of ``extras``,
    the removals are kept (``removed_before`` counts them), and so are the rows of
    removals sent whose outcome is unsure (``unsure_before``), for the resumed sync to
    settle once it has listed their channel. A member's later row tells its fate in
    place of an earlier one (a removal's journal row, written before it is sent; an
    unsure row settled): the earlier ones leave the file when it is closed, and, killed
    before, the next resume keeps only the later.
    ``extras`` adds the report of live members the inventory does not name (sync).
    """

    def __init__(
        self,
        directory: Path,
        fmt: Format,
        extra_columns: Sequence[str],
        *,
        resume: bool = False,
        extras: bool = False,
    ) -> None:
        suffix = fmt.value
        self.succeeded = _Table(
            directory / f"succeeded.{suffix}", fmt, LANDED_COLUMNS, extra_columns, append=resume
        )
        errors_columns = (*LOCATION_FIELDS, *ERROR_FIELDS, *CHANNEL_FIELDS, *MEMBER_FIELDS)
        errors = self._fresh(directory / f"errors.{suffix}", resume)
        self.errors = _Table(errors, fmt, errors_columns, extra_columns)
        # The members an interrupted sync removed are gone, and no later listing names them
        # again: their rows are kept, and those of removals sent whose outcome is unsure
        # until the resumed sync settles them. Every other extra is found afresh.
        self.removed_before = 0
        self.unsure_before: list[dict[str, object]] = []
        # Whether a row was written ahead of its member's settling (see write_extra).
        self._ahead = False
        self.extras: _Table | None = None
        if extras:
            path = directory / f"extras.{suffix}"
            if resume:
                self.removed_before, self.unsure_before = _keep_removals(path, fmt)
            self.extras = _Table(path, fmt, EXTRAS_COLUMNS, (), append=resume)
        self._extra = tuple(extra_columns)
        self._format = fmt
        # Landed rows are most rows: when the succeeded file's columns are the ones chosen
        # here (not a resumed file's older header, and no ``extra`` JSON column), their
        # cells go straight from the row to the file, without a mapping in between.
        self._landed_direct = (
            fmt is Format.CSV
            and EXTRA_JSON_COLUMN not in self._extra
            and self.succeeded.columns == (*LANDED_COLUMNS, *self._extra)
        )

    @property
    def landed_format(self) -> Format | None:
        """The format landed rows may be written in straight from their pieces (see
        :func:`landed_lines`): the report's, when a row is written as it would be from a
        mapping; None when they go through ``write``."""
        if self._format is Format.NDJSON or self._landed_direct:
            return self._format
        return None

    def landed_lines(
        self,
        rows: Sequence[Plain],
        ids: Sequence[str],
        groups: Sequence[str | None],
        times: Sequence[str | None],
    ) -> str | None:
        """:func:`landed_lines` in this writer's format."""
        return landed_lines(self._format, rows, ids, groups, times)

    @property
    def direct_extra(self) -> tuple[str, ...] | None:
        """The user's columns when landed rows go straight to the file (see ``write``), in
        the order their cells follow ``LANDED_COLUMNS``; None when they do not."""
        return self._extra if self._landed_direct else None

    def write_landed(self, lines: str, count: int) -> None:
        """``count`` landed rows, as :func:`landed_lines` wrote them out."""
        self.succeeded.add_lines(lines, count)

    @staticmethod
    def _fresh(path: Path, resume: bool) -> Path:
        if resume:
            path.unlink(missing_ok=True)
        return path

    def write(self, row: RowInfo, result: Result) -> None:
        if not landed_shape(result):
            self.errors.add(report_values(row, result))
        elif self._landed_direct:
            # The user's columns are never known or reserved names, so fields.get gives
            # what carried() would.
            fields = row.fields
            self.succeeded.add_cells((*landed_values(row, result), *map(fields.get, self._extra)))
        else:
            self.succeeded.add(report_values(row, result))

    def write_extra(
        self,
        channel: Channel,
        live: Mapping[str, object],
        fate: Fate,
        result: Result,
        *,
        ahead: bool = False,
    ) -> None:
        """One live member the inventory does not name, with what became of it; ``ahead``:
        what it is until its fate is known, which a later row of it then tells."""
        assert self.extras is not None, "extras are reported by sync only"
        self._ahead = self._ahead or ahead
        self.extras.add(
            {
                **dict(zip(CHANNEL_FIELDS, channel, strict=True)),
                **{name: live.get("id" if name == "member_id" else name) for name in LIVE_FIELDS},
                "fate": fate,
                "reason": result.error_code,
                "reason_msg": result.error_msg,
                "http_status": result.http_status,
                "attempts": result.attempts,
                "request_id": result.request_id,
            }
        )

    @property
    def tables(self) -> list[_Table]:
        return [t for t in (self.succeeded, self.errors, self.extras) if t is not None]

    def flush(self) -> None:
        for table in self.tables:
            table.flush()

    def close(self) -> None:
        """Close every file, flushing first; raises the first ReportsUnwritable, if any."""
        failure: ReportsUnwritable | None = None
        extras_whole = True
        for table in self.tables:
            try:
                table.close()
            except ReportsUnwritable as exc:
                failure = failure or exc
                extras_whole = extras_whole and table is not self.extras
        if extras_whole and self.extras is not None and (self._ahead or self.unsure_before):
            try:
                _rewrite_extras(self.extras.path, self._format, _last_of_each)
            except OSError as exc:
                failure = failure or ReportsUnwritable(self.extras.path, exc)
        if failure is not None:
            raise failure

    @property
    def paths(self) -> list[Path]:
        return [table.path for table in self.tables]


class ReportCorrupt(Exception):
    """A report file an earlier run wrote cannot be read back: names the file and line."""


def landed_key(source: str, line: int, channel: Sequence[str], address: str) -> int:
    """A row's identity (where it came from, its channel, its address) as a 128-bit number:
    what ``--resume`` matches landed rows on, in a fraction of the tuple's memory."""
    text = "\x1f".join((source, str(line), *channel, address))
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    return int.from_bytes(digest)


_PENDING: Final = frozenset({Action.TO_CREATE.value, Action.TO_UPDATE.value})
# A dry run's rows are pending, not landed: resumed, they would be taken for landed and
# never sent.
DRY_RUN_RESUMED: Final = (
    "that run was a --dry-run, which sent nothing, so there is nothing to resume: run "
    "sync again without --resume"
)


def landed_rows(directory: Path, fmt: Format) -> set[int]:
    """The identities (:func:`landed_key`) of every row an earlier run in ``directory``
    reported landed. Raises ReportCorrupt for a row that cannot be read back.

    A torn last line (from a power cut mid-write, or a write cut short) is cut off the file
    first: that row did not count as landed, so it will be sent again, which the upsert
    makes harmless.
    """
    path = directory / f"succeeded.{fmt.value}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return set()
    landed: set[int] = set()
    with open(fd, "rb+") as handle:
        _cut_torn_tail(handle)
        handle.seek(0)
        if fmt is Format.NDJSON:
            records: Iterable[tuple[int, Mapping[str, object]]] = _ndjson_rows(path, handle)
        else:
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
            records = _csv_rows(path, text)
        for line, record in records:
            if record.get("action") in _PENDING:
                # A dry run's, from a run.json that did not record it (an earlier version).
                raise ReportCorrupt(f"{path}:{line}: {DRY_RUN_RESUMED}")
            try:
                host, ecs_id = record.get("host"), record.get("ecs_id")
                address = member_key(str(host or ""), str(ecs_id or ""))
                landed.add(
                    landed_key(
                        str(record["source"]),
                        int(str(record["line"])),
                        [str(record[name]) for name in CHANNEL_FIELDS],
                        address,
                    )
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise ReportCorrupt(f"{path}:{line}: not a report row ({exc!r})") from None
    return landed


def _ndjson_rows(path: Path, handle: IO[bytes]) -> Iterable[tuple[int, Mapping[str, object]]]:
    for number, raw in enumerate(handle, start=1):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ReportCorrupt(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ReportCorrupt(f"{path}:{number}: not a JSON object")
        yield number, record


def _csv_rows(path: Path, text: IO[str]) -> Iterable[tuple[int, Mapping[str, object]]]:
    reader = csv.reader(text, strict=True)
    start = 1
    try:
        header = [unneutralise(name) for name in next(reader, [])]
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if len(row) != len(header):
                raise ReportCorrupt(
                    f"{path}:{start}: {len(row)} cells where the header has {len(header)}"
                )
            yield start, dict(zip(header, map(unneutralise, row), strict=True))
    except csv.Error as exc:
        raise ReportCorrupt(f"{path}:{start}: CSV syntax: {exc}") from None


def _cut_torn_tail(handle: IO[bytes]) -> None:
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


def _keep_removals(path: Path, fmt: Format) -> tuple[int, list[dict[str, object]]]:
    """Rewrite an extras report with the last row of each member, as it was written, when
    that row is a removal or a removal sent but not known to have applied (kept when the
    run stopped, or failed: either may have applied): how many removals, and the unsure
    rows."""
    removed = Fate.REMOVED.value
    unsure = (Fate.KEPT.value, Fate.FAILED.value)

    def pick(records: Records) -> Records:
        return [
            (text, row)
            for text, row in _last_of_each(records)
            if row["fate"] == removed or (row["fate"] in unsure and _number(row["attempts"]))
        ]

    kept = _rewrite_extras(path, fmt, pick)
    unsure_kept = [row for _, row in kept if row["fate"] != removed]
    return len(kept) - len(unsure_kept), unsure_kept


def _last_of_each(records: Records) -> Records:
    """The last record of each member, in the file's order: the one that tells its fate
    (see :class:`ReportWriter`)."""
    last = {_member_key(row): text for text, row in records}
    return [(text, row) for text, row in records if last[_member_key(row)] is text]


def _member_key(row: Mapping[str, object]) -> tuple[object, ...]:
    return (*(row.get(name) for name in CHANNEL_FIELDS), row.get("member_id"))


def _rewrite_extras(path: Path, fmt: Format, pick: Callable[[Records], Records]) -> Records:
    """Rewrite an extras report with the whole records ``pick`` picks, as they were
    written (a row the interruption tore, killed mid-write, is never one: its member, if
    still live, is found again); those records."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    with open(fd, "rb") as handle:
        text = handle.read().decode("utf-8", "surrogateescape")
    header, records = _extras_records(text, fmt)
    if header is None:
        return []
    kept = pick(records)
    written = header + "".join(record for record, _ in kept)
    if written != text:  # else nothing to drop: the file is left as it is
        write_atomic(path, written.encode("utf-8", "surrogateescape"))
    return kept


def _extras_records(text: str, fmt: Format) -> tuple[str | None, Records]:
    """The header of an extras report ("" for NDJSON; None for a CSV one without its
    header) and its whole records, each with the text it was read from."""
    return ("", _ndjson_extras(text)) if fmt is Format.NDJSON else _csv_extras(text)


def _ndjson_extras(text: str) -> Records:
    """The whole rows of an NDJSON extras report, each with the text it was read from."""
    records = []
    for line in text.split("\n"):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(row, dict) and "fate" in row and "attempts" in row:
            records.append((line + "\n", row))
    return records


def _csv_extras(text: str) -> tuple[str | None, Records]:
    """The header of a CSV extras report (None when it has none) and its whole records,
    each with the text it was read from, its cells as written."""
    taken: list[str] = []

    def read() -> Iterator[str]:
        # Lines as csv.reader is given a file's (str.splitlines would also break them at
        # U+2028 and the like, which a cell may hold).
        for line in io.StringIO(text, newline=""):
            taken.append(line)
            yield line

    read_records: list[tuple[list[str], str]] = []
    for cells in csv.reader(read()):
        read_records.append((cells, "".join(taken)))
        taken.clear()
    if not read_records or "fate" not in read_records[0][0]:
        return None, []
    header = read_records[0][0]
    return read_records[0][1], [
        (record, dict(zip(header, map(unneutralise, cells), strict=True)))
        for cells, record in read_records[1:]
        if len(cells) == len(header) and record.endswith("\n")
    ]


def _number(value: object) -> int:
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all: a reader never sees half a file.

    The temporary file has a fresh random name and is created exclusively, so a symbolic
    link planted in the directory is never followed; the rename replaces a link at ``path``
    itself, not what it points to. ``mode`` is the file's (less the umask)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Mapping[str, object]) -> None:
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    write_atomic(path, orjson.dumps(data, option=options, default=str) + b"\n")


def write_csv_atomic(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """A small table (not a report of rows) as CSV, whole or not at all."""
    buffer = io.StringIO()
    if rows:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(map(neutralise, rows[0]))
        for row in rows:
            writer.writerow(csv_cell(value) for value in row.values())
    write_atomic(path, buffer.getvalue().encode("utf-8", "surrogateescape"))


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
