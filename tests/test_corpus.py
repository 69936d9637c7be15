"""The hostile-input corpus, driven through Reader + Intake: what each line of each file becomes.

Small fixtures live in tests/corpus/ byte for byte; big or binary ones are generated here.
Every data line has its fate written down: valid (with the member as it will be sent),
invalid (with "field: reason" or "row ..." as the report says it), or a duplicate of an
earlier line. Files that cannot be read on raise InputError, after the rows before it.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from worker.intake import Entry, Intake
from worker.inventory import MAX_CELL_BYTES, InputError, Reader, detect

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
            v(3, port=81, ecs_id="ecs-1"),
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


def _run(path: Path) -> tuple[list[tuple[Fate, dict[str, object]]], InputError | None]:
    """Each record's fate (with the fields it carried), and the error that stopped the file."""
    intake = Intake(DEFAULTS)
    fates: list[tuple[Fate, dict[str, object]]] = []
    try:
        reader = Reader(detect(str(path)))
    except InputError as exc:
        return fates, exc
    try:
        for record in reader:
            fate = intake.process(record)
            if isinstance(fate, Entry):
                assert fate.row.member is not None
                fates.append((Valid(record.line, fate.row.member.to_json()), record.fields))
                continue
            assert isinstance(fate, tuple)
            _, result = fate
            if result.duplicate_of:
                of_line = int(result.duplicate_of.rpartition(":")[2])
                assert result.duplicate_of == f"{path}:{of_line}"
                fates.append((Duplicate(record.line, of_line), record.fields))
            else:
                fates.append((Invalid(record.line, result.error_msg), record.fields))
    except InputError as exc:
        return fates, exc
    finally:
        reader.close()
    return fates, None


def _matches(got: Fate, want: Fate) -> bool:
    if isinstance(want, Invalid):
        return isinstance(got, Invalid) and got.line == want.line and want.says in got.says
    return got == want


def test_every_committed_fixture_has_a_case() -> None:
    committed = {p.name for p in CORPUS.iterdir() if not p.name.startswith(".")}
    assert committed <= set(CASES)
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
