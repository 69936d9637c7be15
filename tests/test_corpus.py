"""The hostile-input corpus, driven through Reader + Intake: what each line of each file becomes.

Small fixtures live in tests/corpus/ byte for byte; big or binary ones are generated here.
Every data line has its fate written down: valid (with the member as it will be sent),
invalid (with "field: reason" or "row ..." as the report says it), or a duplicate of an
earlier line. Files that cannot be read on raise InputError, after the rows before it.

The hostile fixtures keep their fates in a sidecar, ``NAME.expect``, next to them; the
monsters (rows of tens of megabytes, at the real limits) are generated here, and reading
them must hold no more than a few rows' worth of memory.
"""

from __future__ import annotations

import csv
import gzip
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from worker.intake import Entry, Intake, Settled
from worker.inventory import (
    MAX_CELL_BYTES,
    MAX_COLUMNS,
    InputError,
    Reader,
    Record,
    detect,
)

CORPUS = Path(__file__).parent / "corpus"
DEFAULTS = {"project_id": "p", "instance_id": "i", "vpc_channel_id": "c"}


@dataclass(frozen=True)
class Valid:
    line: int
    member: dict[str, object]


@dataclass(frozen=True)
class Invalid:
    line: int
    says: str  # a substring of the report's error_msg, which names the field first


@dataclass(frozen=True)
class Duplicate:
    line: int
    of_line: int


@dataclass(frozen=True)
class Stops:
    says: str
    at_open: bool = False


Fate = Valid | Invalid | Duplicate


def v(line: int, host: str | None = None, **member: object) -> Valid:
    return Valid(line, {"host": host, **member} if host is not None else member)


BIG_CELL = 5 * MAX_CELL_BYTES


def _big_field() -> bytes:
    huge = "x" * BIG_CELL
    return f"host,port,note,other\n10.0.0.1,80,{huge},{huge}\n10.0.0.2,80,small,\n".encode()


def _truncated_gzip() -> bytes:
    rows = "".join(f"10.0.{n // 250}.{n % 250 + 1},80\n" for n in range(4000))
    packed = gzip.compress(f"host,port\n{rows}".encode())
    return packed[: len(packed) // 2]


# Files generated per test: too big to commit, or binary.
GENERATED: dict[str, Callable[[], bytes]] = {
    "big_field.csv": _big_field,
    "not_gzip.csv.gz": lambda: b"host\n10.0.0.1\n",
}

CASES: dict[str, tuple[list[Fate], Stops | None]] = {
    "bom_crlf.csv": (
        [v(2, "10.0.0.1", port=80, weight=5), v(3, "10.0.0.2", port=81, weight=6)],
        None,
    ),
    "bom_crlf.ndjson": ([v(1, "10.0.0.1", port=80), v(3, "10.0.0.2", port=81)], None),
    # Records spanning lines report the line they start on.
    "quoted.csv": (
        [
            v(2, "10.0.0.1", port=80),
            v(3, "10.0.0.2", port=80),
            v(5, "10.0.0.3", port=80),
            v(8, "10.0.0.4", port=80),
        ],
        None,
    ),
    "non_utf8.csv": (
        [
            v(2, "10.0.0.1", port=80),
            Invalid(3, "row is not valid UTF-8"),
            v(4, "10.0.0.3", port=80),
        ],
        None,
    ),
    # A row of empty cells is not a blank line: it is a row without a host.
    "blank_lines.csv": (
        [
            v(3, "10.0.0.1", port=80),
            v(6, "10.0.0.2", port=81),
            Invalid(7, "host: a member needs host or ecs_id"),
        ],
        None,
    ),
    # ECS members need both ecs_id and ecs_name (the API's page); a host with an
    # ecs_name and no ecs_id is an IP member, as before.
    "ecs.csv": (
        [
            v(2, port=80, ecs_id="ecs-1", ecs_name="web01"),
            Invalid(3, "ecs_name: an ECS member (ecs_id given) needs ecs_name"),
            Invalid(4, "ecs_id: an ECS member (ecs_name given) needs ecs_id"),
            v(5, "10.0.0.4", port=80, ecs_name="web04"),
        ],
        None,
    ),
    "header_only.csv": ([], None),
    "empty.csv": ([], None),
    "missing_column.csv": (
        [
            Invalid(2, "host: a member needs host or ecs_id"),
            Invalid(3, "host: a member needs host or ecs_id"),
        ],
        None,
    ),
    "duplicate_header.csv": ([], Stops("header names column 'host' twice", at_open=True)),
    "header_not_utf8.csv": ([], Stops("header is not valid UTF-8", at_open=True)),
    "cells.csv": (
        [Invalid(2, "row has 3 cells but the header has 2 columns"), v(3, "10.0.0.2")],
        None,
    ),
    "shapes.ndjson": (
        [
            v(1, "10.0.0.1"),
            Invalid(2, "row is a JSON array, not an object"),
            Invalid(3, "row is a JSON string, not an object"),
            Invalid(4, "row is a JSON null, not an object"),
            Invalid(5, "row is a JSON number, not an object"),
            Invalid(6, "row is not valid JSON"),
            Invalid(7, "row is not valid JSON"),
            v(9, "10.0.0.5"),
        ],
        None,
    ),
    "types.ndjson": (
        [
            v(1, "10.0.1.1", port=80, weight=10000, status=2),
            Invalid(2, "port: must be a whole number, got 1.0"),
            Invalid(3, "weight: must be a whole number, got '1.0'"),
            Invalid(4, "weight: must be 0..10000, got -1"),
            Invalid(5, "weight: must be 0..10000, got -5"),
            Invalid(6, "port: must be 0..65535, got 65536"),
            Invalid(7, "port: must be a whole number, got '8e1'"),
            Invalid(8, "port: must be a whole number, got True"),
            v(9, "10.0.1.9"),
            Invalid(10, "host: must be text"),
            Invalid(11, "member_group_name: must be text"),
        ],
        None,
    ),
    "booleans.csv": (
        [v(n, f"10.0.2.{n - 1}", is_backup=True) for n in range(2, 8)]
        + [v(n, f"10.0.2.{n - 1}", is_backup=False) for n in range(8, 13)]
        + [v(13, "10.0.2.12")]
        + [
            Invalid(n, f"is_backup: must be true/false/yes/no/1/0, got {bad!r}")
            for n, bad in ((14, "y"), (15, "on"), (16, "2"))
        ],
        None,
    ),
    "booleans.ndjson": (
        [v(n, f"10.0.3.{n}", is_backup=n % 2 == 1) for n in range(1, 7)]
        + [Invalid(n, "is_backup: must be true/false/yes/no/1/0") for n in (7, 8, 9)],
        None,
    ),
    "padded.csv": (
        [
            v(2, "10.0.0.1", port=80, weight=7, is_backup=True, member_group_name="grp-1"),
            v(3, port=81, ecs_id="ecs-1", ecs_name="vm-1"),
        ],
        None,
    ),
    "ipv6.csv": (
        [
            v(2, "2001:db8::1", port=80),
            Duplicate(3, 2),
            Duplicate(4, 2),
            Duplicate(5, 2),
            # An IPv4-mapped address is its IPv4 address.
            v(6, "10.0.0.1", port=80),
            Duplicate(7, 6),
            Invalid(8, "host: not an IP address or host name: '2001:db8::g'"),
        ],
        None,
    ),
    "hostnames.csv": (
        [
            v(2, "web-1.example.com"),
            Duplicate(3, 2),
            Duplicate(4, 2),
            Invalid(5, "host: not an IP address or host name"),
            Invalid(6, "host: not an IP address or host name"),
            v(7, "example"),
        ],
        None,
    ),
    # The same address in another channel is not a duplicate.
    "channels.csv": (
        [
            v(2, "10.0.0.1"),
            Duplicate(3, 2),
            v(4, "10.0.0.1"),
            Invalid(5, "vpc_channel_id: must be 1-64 letters, digits, '-' or '_'"),
        ],
        None,
    ),
    "big_field.csv": (
        [
            Invalid(
                2,
                f"row field 'note' is {BIG_CELL} characters, more than the cell limit of "
                f"{MAX_CELL_BYTES}",
            ),
            v(3, "10.0.0.2", port=80),
        ],
        None,
    ),
    "not_gzip.csv.gz": ([], Stops("not a valid gzip stream", at_open=True)),
}


def _path(name: str, tmp_path: Path) -> Path:
    if name in GENERATED:
        path = tmp_path / name
        path.write_bytes(GENERATED[name]())
        return path
    return CORPUS / name


def _processed(path: Path) -> tuple[list[tuple[Record, Entry | Settled]], InputError | None]:
    """Each record with what the intake made of it, and the error that stopped the file."""
    intake = Intake(DEFAULTS)
    processed: list[tuple[Record, Entry | Settled]] = []
    try:
        reader = Reader(detect(str(path)))
    except InputError as exc:
        return processed, exc
    try:
        for record in reader:
            outcome = intake.process(record)
            assert isinstance(outcome, Entry | tuple)
            processed.append((record, outcome))
    except InputError as exc:
        return processed, exc
    finally:
        reader.close()
    return processed, None


def _duplicate_of(path: Path, outcome: Entry | Settled) -> int | None:
    if isinstance(outcome, Entry) or not outcome[1].duplicate_of:
        return None
    where = outcome[1].duplicate_of
    of_line = int(where.rpartition(":")[2])
    assert where == f"{path}:{of_line}"
    return of_line


def _run(path: Path) -> tuple[list[tuple[Fate, dict[str, object]]], InputError | None]:
    """Each record's fate (with the fields it carried), and the error that stopped the file."""
    processed, error = _processed(path)
    fates: list[tuple[Fate, dict[str, object]]] = []
    for record, outcome in processed:
        of_line = _duplicate_of(path, outcome)
        if isinstance(outcome, Entry):
            assert outcome.row.member is not None
            fates.append((Valid(record.line, outcome.row.member.to_json()), record.fields))
        elif of_line is not None:
            fates.append((Duplicate(record.line, of_line), record.fields))
        else:
            fates.append((Invalid(record.line, outcome[1].error_msg), record.fields))
    return fates, error


def _matches(got: Fate, want: Fate) -> bool:
    if isinstance(want, Invalid):
        return isinstance(got, Invalid) and got.line == want.line and want.says in got.says
    return got == want


def test_every_committed_fixture_has_a_case() -> None:
    committed = {p.name for p in CORPUS.iterdir() if not p.name.startswith(".")}
    sidecars = {name for name in committed if name.endswith(EXPECT)}
    assert {name.removesuffix(EXPECT) for name in sidecars} <= committed
    assert committed - sidecars <= set(CASES) | set(SIDECARS)
    assert set(GENERATED) <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus(name: str, tmp_path: Path) -> None:
    expected, stops = CASES[name]
    path = _path(name, tmp_path)
    fates, error = _run(path)
    assert len(fates) == len(expected), [fate for fate, _ in fates]
    for (got, fields), want in zip(fates, expected, strict=True):
        assert _matches(got, want), (got, want)
        # Whatever the row, its cells are valid, bounded text a report can carry.
        orjson.dumps(fields)
        assert all(
            len(value) <= MAX_CELL_BYTES for value in fields.values() if isinstance(value, str)
        )
    if stops is None:
        assert error is None
    else:
        assert error is not None
        assert stops.says in str(error)
        assert error.source == str(path)
        assert (error.line == 1) if stops.at_open else error.line is not None


def test_a_truncated_gzip_keeps_the_rows_read_before_it(tmp_path: Path) -> None:
    # Where the cut falls in the rows depends on zlib, so this case checks a prefix.
    path = tmp_path / "truncated.csv.gz"
    path.write_bytes(_truncated_gzip())
    fates, error = _run(path)
    assert error is not None
    assert "truncated" in error.reason
    lines = [fate.line for fate, _ in fates]
    assert 0 < len(lines) < 4000
    assert lines == list(range(2, len(lines) + 2))
    assert all(isinstance(fate, Valid) for fate, _ in fates)
    assert error.line is not None
    assert error.line > lines[-1]


def test_a_bad_row_with_every_problem_still_leaves_clean_cells(tmp_path: Path) -> None:
    path = tmp_path / "worst.csv"
    huge = b"y" * (MAX_CELL_BYTES + 1)
    path.write_bytes(b"host,note,other\n10.0.0.\xff," + huge + b"," + huge + b",surplus\n")
    ((fate, fields),), error = _run(path)
    assert error is None
    assert fate == Invalid(2, "row has 4 cells but the header has 3 columns")
    orjson.dumps(fields)
    assert fields["host"] == "10.0.0.\ufffd"
    assert all(len(str(value)) < 100 for value in fields.values())


def test_an_unterminated_quote_does_not_swallow_later_rows(tmp_path: Path) -> None:
    path = tmp_path / "stray_quote.csv"
    path.write_bytes(b'host,note\n10.0.0.1,"oops\n10.0.0.2,fine\n10.0.0.3,fine\n')
    fates, error = _run(path)
    # Silently turning three rows into one valid row would lose two report rows: the file
    # stops at the broken record instead, naming the line where its quote opened.
    assert error is not None and error.line == 2
    assert "never closed" in str(error)
    assert not any(isinstance(fate, Valid) for fate, _ in fates)


# The hostile corpus: each fixture's fates in its sidecar, one data row a line.
EXPECT = ".expect"
SIDECARS = sorted(p.name.removesuffix(EXPECT) for p in CORPUS.glob(f"*{EXPECT}"))
# A row's fate, as the sidecars write it: its line, then "valid" and the address it is sent
# with, "duplicate" and the line it repeats, or its error code and a fragment of the message.
Outcome = tuple[int, str, str]
# Where a file stops, and a fragment of why.
Stop = tuple[int, str]


def _expected(path: Path) -> tuple[list[Outcome], Stop | None]:
    outcomes: list[Outcome] = []
    stop = None
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.startswith("#") or not text.strip():
            continue
        first, fate, detail = text.split("\t")
        if first == "stops":
            stop = (int(fate), detail)
        else:
            outcomes.append((int(first), fate, detail))
    return outcomes, stop


def _outcomes(path: Path) -> tuple[list[Outcome], InputError | None]:
    processed, error = _processed(path)
    outcomes: list[Outcome] = []
    for record, outcome in processed:
        of_line = _duplicate_of(path, outcome)
        if isinstance(outcome, Entry):
            outcomes.append((record.line, "valid", outcome.address))
        elif of_line is not None:
            outcomes.append((record.line, "duplicate", str(of_line)))
        else:
            result = outcome[1]
            assert result.error_code is not None and result.error_msg is not None
            outcomes.append((record.line, result.error_code, result.error_msg))
        # Whatever the row, its cells are bounded text a report can carry and write.
        orjson.dumps(record.fields)
        assert all(len(v) <= MAX_CELL_BYTES for v in record.fields.values() if isinstance(v, str))
    return outcomes, error


def _check(path: Path, expected: list[Outcome], stop: Stop | None) -> list[Outcome]:
    got, error = _outcomes(path)
    assert [line for line, *_ in got] == [line for line, *_ in expected]
    for (line, fate, detail), (_, want_fate, want_detail) in zip(got, expected, strict=True):
        assert fate == want_fate, (line, fate, detail)
        if fate in ("valid", "duplicate"):
            assert detail == want_detail, (line, detail)
        else:
            assert want_detail in detail, (line, detail)
    if stop is None:
        assert error is None, error
    else:
        assert error is not None
        assert (error.source, error.line) == (str(path), stop[0])
        assert stop[1] in error.reason
    return got


def _data_rows(path: Path) -> int:
    """The data rows of a committed fixture, counted by the plainest reading of it."""
    if path.suffix == ".ndjson":
        return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
    count = 0
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        # A row is data unless it is a blank line (or the one blank cell of one).
        rows = (r for r in csv.reader(handle, strict=True) if r and (len(r) > 1 or r[0].strip()))
        next(rows)  # the header
        try:
            for _ in rows:
                count += 1
        except csv.Error:
            pass  # a quote never closed: the rows before it are the ones there are
    return count


@pytest.mark.parametrize("name", SIDECARS)
def test_hostile_corpus(name: str) -> None:
    path = CORPUS / name
    got = _check(path, *_expected(CORPUS / f"{name}{EXPECT}"))
    # Every data row ends in exactly one outcome: none lost, none made up.
    assert len(got) == _data_rows(path)


# Monsters, generated at the real limits: each far bigger than what reading it may hold.
MONSTER = 50 * 1024 * 1024
HELD = 16 * 1024 * 1024


def _write(path: Path, parts: Iterator[bytes]) -> Path:
    with path.open("wb") as handle:
        for part in parts:
            handle.write(part)
    return path


def _monster_line(size: int) -> Iterator[bytes]:
    block = b"m" * (1024 * 1024)
    for _ in range(size // len(block)):
        yield block


def _monsters_csv(path: Path) -> tuple[Path, list[Outcome], Stop | None]:
    tall = 1000  # lines of a quoted cell, 2 KiB each, that the row spans
    wide = f"10.0.0.3,{','.join(['w' * (MAX_CELL_BYTES - 1)] * 20)}\r\n".encode()
    tall_row = b'10.0.0.4,80,"' + (b"t" * 2046 + b"\r\n") * tall + b'"\r\n'
    parts = [
        b"host,port,note\r\n10.0.0.1,80,before\r\n",
        b"10.0.0.2,80," + b"c" * (MAX_CELL_BYTES + 1) + b"\r\n",
        wide,
        tall_row,
        b"10.0.0.5,80,after a tall row\r\n10.0.0.6,80,",
        *_monster_line(MONSTER),
        b"\r\n10.0.0.7,80,after a 50 MB line\r\n10.0.0.8,80,",
        *_monster_line(MONSTER),  # no line break: the input ends inside it
    ]
    after = 6 + tall  # the tall row starts on line 5 and ends on the line of its quote
    expected = [
        (2, "valid", "10.0.0.1"),
        (3, "invalid.row", f"row field 'note' is {MAX_CELL_BYTES + 1} characters, more than"),
        (4, "invalid.row", f"row is {len(wide)} characters, more than the row limit of 1048576"),
        (5, "invalid.row", f"row is {len(tall_row)} characters, more than the row limit"),
        (after, "valid", "10.0.0.5"),
        (after + 1, "invalid.row", f"row is {12 + MONSTER + 2} characters"),
        (after + 2, "valid", "10.0.0.7"),
        (after + 3, "invalid.row", f"row is {12 + MONSTER} characters"),
    ]
    return _write(path / "monsters.csv", iter(parts)), expected, None


def _monsters_ndjson(path: Path) -> tuple[Path, list[Outcome], Stop | None]:
    opening, closing = b'{"host": "10.0.0.2", "note": "', b'"}\n'
    parts = [
        b'{"host": "10.0.0.1"}\n',
        opening,
        *_monster_line(MONSTER),
        closing,
        b'{"host": "10.0.0.3"}\n{"host": "10.0.0.4", "deep": ',
        b"[" * 100_000 + b"]" * 100_000,
        b"}\n",
        opening,
        *_monster_line(MONSTER),  # no line break
    ]
    expected = [
        (1, "valid", "10.0.0.1"),
        (2, "invalid.row", f"row is {len(opening) + MONSTER + len(closing)} bytes, more than"),
        (3, "valid", "10.0.0.3"),
        (4, "invalid.row", "row nests deeper than the limit of 32 levels"),
        (5, "invalid.row", f"row is {len(opening) + MONSTER} bytes"),
    ]
    return _write(path / "monsters.ndjson", iter(parts)), expected, None


def _monster_never_closed(path: Path) -> tuple[Path, list[Outcome], Stop | None]:
    parts = [b'host,port,note\n10.0.0.1,80,fine\n10.0.0.2,80,"', *_monster_line(MONSTER)]
    expected = [(2, "valid", "10.0.0.1")]
    stop = (3, "CSV syntax: unexpected end of data (a quoted cell that is never closed?)")
    return _write(path / "never_closed.csv", iter(parts)), expected, stop


def _monster_header(path: Path) -> tuple[Path, list[Outcome], Stop | None]:
    parts = [b"host,port,", *_monster_line(MONSTER), b"\n10.0.0.1,80\n"]
    stop = (1, f"header is {10 + MONSTER + 1} characters, more than the row limit")
    return _write(path / "monster_header.csv", iter(parts)), [], stop


def _wide_header(path: Path) -> tuple[Path, list[Outcome], Stop | None]:
    header = ",".join(f"c{n}" for n in range(2 * MAX_COLUMNS)).encode()
    stop = (1, f"header has {2 * MAX_COLUMNS} columns, more than the limit of {MAX_COLUMNS}")
    return _write(path / "wide_header.csv", iter([header, b"\n1\n"])), [], stop


@pytest.mark.parametrize(
    "make",
    [_monsters_csv, _monsters_ndjson, _monster_never_closed, _monster_header, _wide_header],
)
def test_monsters_are_refused_without_being_held(
    make: Callable[[Path], tuple[Path, list[Outcome], Stop | None]], tmp_path: Path
) -> None:
    path, expected, stop = make(tmp_path)
    tracemalloc.start()
    try:
        # Every row accounted for, on its line, the rows after each monster read too.
        _check(path, expected, stop)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < HELD, f"{peak:,} bytes held reading {path.stat().st_size:,}"
    assert path.stat().st_size > 3 * HELD or path.name == "wide_header.csv"
