"""Readers: cells and editor line numbers survive any CSV or NDJSON a writer can produce."""

from __future__ import annotations

import csv
import gzip
import io
import re
import sys
import zlib
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker import inventory
from worker.inventory import (
    MAX_DEPTH,
    STDIN_NAME,
    Format,
    Input,
    InputError,
    Reader,
    Stream,
    detect,
    ndjson_record,
    open_inputs,
    read_all,
)
from worker.reports import is_report, own_column

# The reader opens text with newline="", which splits lines at \r\n, \r and \n alike.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Surrogates cannot be written as UTF-8 at all; everything else must come back as it went in.
CELL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
BLANK = st.sampled_from(["\n", "\r\n", "   \n", "\t\r\n"])
# A hypothesis temp dir outlives one example, so examples rewrite one file in it. Each
# example writes and reads files, which takes what the machine gives it: no deadline.
PROPERTY_SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)


def _line_of(text: str, offset: int) -> int:
    return len(_LINE_BREAK.findall(text, 0, offset)) + 1


def _write(path: Path, data: bytes, compressed: bool) -> Input:
    target = path.with_suffix(path.suffix + ".gz") if compressed else path
    target.write_bytes(gzip.compress(data) if compressed else data)
    return detect(str(target))


def _read(source: Input) -> list[tuple[int, dict[str, object], str | None]]:
    reader = Reader(source)
    try:
        return [(r.line, r.fields, r.problem) for r in reader]
    finally:
        reader.close()


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]], list[str | None]]:
    """A header, rows of its width, and the blank line (or none) to put before each row."""
    header = draw(st.lists(NAME, min_size=2, max_size=4, unique=True))
    rows = draw(st.lists(st.lists(CELL, min_size=len(header), max_size=len(header)), max_size=6))
    blanks = draw(st.lists(st.none() | BLANK, min_size=len(rows), max_size=len(rows)))
    return header, rows, blanks


@PROPERTY_SETTINGS
# csv.writer quotes a cell holding \r only when \r is in its line terminator, so LF files
# are written with every cell quoted to stay unambiguous.
@given(
    csv_tables(),
    st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]),
    st.booleans(),
)
def test_csv_cells_and_start_lines_survive(
    tmp_path: Path,
    table: tuple[list[str], list[list[str]], list[str | None]],
    dialect: tuple[str, int],
    compressed: bool,
) -> None:
    header, rows, blanks = table
    terminator, quoting = dialect
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
    writer.writerow(header)
    expected = []
    for row, blank in zip(rows, blanks, strict=True):
        if blank is not None:
            out.write(blank)
        expected.append(
            (_line_of(out.getvalue(), out.tell()), dict(zip(header, row, strict=True)), None)
        )
        writer.writerow(row)
    source = _write(tmp_path / "t.csv", out.getvalue().encode(), compressed)
    assert _read(source) == expected


JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | CELL,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CELL, inner, max_size=3),
    max_leaves=8,
)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(st.dictionaries(CELL, JSON_VALUE, max_size=4), st.none() | BLANK), max_size=6
    ),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_ndjson_objects_and_lines_survive(
    tmp_path: Path,
    objects: list[tuple[dict[str, object], str | None]],
    terminator: bytes,
    compressed: bool,
) -> None:
    data = b""
    line = 0
    expected = []
    for value, blank in objects:
        if blank is not None:
            data += blank.encode()
            line += 1
        data += orjson.dumps(value) + terminator
        line += 1
        # The user's own keys named like a report's columns are kept under "user.".
        kept = value if is_report(value) else {own_column(k): v for k, v in value.items()}
        expected.append((line, kept, None))
    source = _write(tmp_path / "t.ndjson", data, compressed)
    assert _read(source) == expected


@pytest.mark.parametrize(
    ("path", "stdin_format", "expected"),
    [
        ("a.csv", None, Input("a.csv", Format.CSV, gzip=False)),
        ("dir.v1/A.CSV.GZ", None, Input("dir.v1/A.CSV.GZ", Format.CSV, gzip=True)),
        ("a.jsonl", None, Input("a.jsonl", Format.NDJSON, gzip=False)),
        ("a.ndjson.gz", Format.CSV, Input("a.ndjson.gz", Format.NDJSON, gzip=True)),
        ("export.txt", Format.NDJSON, Input("export.txt", Format.NDJSON, gzip=False)),
        ("export.gz", Format.CSV, Input("export.gz", Format.CSV, gzip=True)),
        ("-", Format.CSV, Input("-", Format.CSV, gzip=False)),
    ],
)
def test_detect(path: str, stdin_format: Format | None, expected: Input) -> None:
    assert detect(path, stdin_format) == expected


@pytest.mark.parametrize("path", ["-", "export.txt", "noext", "a.csv.bz2"])
def test_detect_refuses_what_it_cannot_name(path: str) -> None:
    with pytest.raises(InputError, match="format"):
        detect(path)


def test_stdin_is_read_with_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO(b'{"host": "10.0.0.1"}\n'))
    monkeypatch.setattr(sys, "stdin", fake)
    reader = Reader(detect("-", Format.NDJSON))
    assert [(r.source, r.line, r.fields) for r in reader] == [(STDIN_NAME, 1, {"host": "10.0.0.1"})]
    assert reader.input.name == STDIN_NAME


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p / "missing.csv", "no such file"),
        (lambda p: (p / "dir.csv").mkdir() or p / "dir.csv", "is a directory"),
        (lambda p: (p / "x.csv.gz").write_bytes(b"host\n1.2.3.4\n") and p / "x.csv.gz", "gzip"),
    ],
)
def test_unreadable_files_stop_at_open(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=reason) as caught:
        Reader(detect(str(make(tmp_path))))
    assert caught.value.source.startswith(str(tmp_path))


def test_truncated_gzip_yields_the_rows_before_it(tmp_path: Path) -> None:
    rows = "".join(f'{{"host": "10.0.{n // 256}.{n % 256}"}}\n' for n in range(5000))
    path = tmp_path / "big.ndjson.gz"
    packed = gzip.compress(rows.encode())
    path.write_bytes(packed[: len(packed) // 2])
    # Every line the cut stream holds whole, then an error naming the one it breaks in.
    whole = zlib.decompressobj(wbits=31).decompress(packed[: len(packed) // 2]).count(b"\n")
    seen: list[int] = []
    with pytest.raises(InputError, match="truncated") as caught:
        seen.extend(record.line for record in Reader(detect(str(path))))
    assert whole > 0
    assert seen == list(range(1, whole + 1))
    assert caught.value.line == whole + 1


@pytest.mark.parametrize("suffix", [".csv", ".ndjson"])
@pytest.mark.parametrize("lane", [False, True])
@pytest.mark.parametrize("change", ["cut", "append"])
def test_a_file_changed_while_read_breaks_the_input_and_a_cut_line_is_no_row(
    tmp_path: Path, suffix: str, lane: bool, change: str
) -> None:
    """A file truncated in place under a run was read to its new end without a word: the
    rows past the cut were lost, and the line the cut went through landed as a row (with
    a host cut short, a valid name). One appended to had its new rows left unread."""
    from worker.fastlane import Block, FastStream
    from worker.fastlane.csvblocks import CsvBlocks
    from worker.fastlane.ndjson import NdjsonBlocks
    from worker.intake import Intake

    hosts = [f"srv{n:05d}-{'a' * 40}.example.com" for n in range(3000)]
    if suffix == ".csv":
        text = "project_id,instance_id,vpc_channel_id,host\n"
        text += "".join(f"p,i,c,{host}\n" for host in hosts)
    else:
        rows = [orjson.dumps({"vpc_channel_id": "c", "host": h}).decode() for h in hosts]
        text = "".join(row + "\n" for row in rows)
    path = tmp_path / f"in{suffix}"
    path.write_text(text)
    reader = Reader(detect(str(path)))
    blocks = CsvBlocks if suffix == ".csv" else NdjsonBlocks
    stream = (
        FastStream([reader], lambda r: blocks(r, Intake({}), block_bytes=4096))
        if lane
        else Stream([reader])
    )
    items = iter(stream.items() if isinstance(stream, FastStream) else stream)
    taken = [next(items)]
    if change == "cut":
        # Through a host, well past what the first item read.
        with path.open("r+b") as handle:
            handle.truncate(text.index(hosts[2000]) + 12)
    else:
        # Whole lines: they are rows, read as such, but the file is not the one opened.
        with path.open("ab") as handle:
            handle.write(text.encode()[-2 * len(text) // len(hosts) :].split(b"\n", 1)[1])
    taken.extend(items)
    assert stream.error is not None and "changed while it was read" in stream.error.reason
    seen: list[object] = []
    for item in taken:
        if isinstance(item, Block):
            fast = item.fast or [True] * item.count
            seen += [host for host, ok in zip(item.hosts, fast, strict=True) if ok]
            seen += [record.fields.get("host") for record in item.records.values()]
        else:
            seen.append(item.fields.get("host"))
    assert seen and set(seen) <= set(hosts)  # no host cut short, however it was read


def test_open_inputs_closes_what_it_opened_when_a_later_input_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("host\n10.0.0.1\n")
    opened: list[Reader] = []
    real_init = Reader.__init__

    def spy(self: Reader, source: Input) -> None:
        real_init(self, source)
        opened.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Reader, "__init__", spy)
        with pytest.raises(InputError):
            open_inputs([detect(str(good)), detect(str(tmp_path / "gone.csv"))])
    assert [reader._binary.closed for reader in opened] == [True]


def test_read_all_is_one_stream_in_input_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.ndjson"
    first.write_text("host,port\n10.0.0.1,80\n")
    second.write_text('\n{"host": "10.0.0.2"}\n')
    readers = open_inputs([detect(str(first)), detect(str(second))])
    records = [(r.source, r.line) for r in read_all(readers)]
    assert records == [(str(first), 2), (str(second), 2)]
    assert all(reader._binary.closed for reader in readers)


def test_single_column_blank_rows_are_blank_lines(tmp_path: Path) -> None:
    # With one column a row of whitespace cannot be told from a blank line; it is skipped.
    path = tmp_path / "one.csv"
    path.write_text('host\n""\n  \n10.0.0.1\n')
    assert _read(detect(str(path))) == [(4, {"host": "10.0.0.1"}, None)]


# Small limits, so that hypothesis can put records, quotes and line breaks on every side of
# them; the real ones are exercised by tests/test_corpus.py.
SMALL_ROW = 40


def _small_limits(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(inventory, "MAX_ROW_BYTES", SMALL_ROW)
    patch.setattr(inventory, "_READ", SMALL_ROW + 1)


def _reference(text: str, header: list[str]) -> tuple[list[tuple[int, object, object]], bool]:
    """What the reader must yield for the data lines of ``text``, and whether it reads to the
    end (True) or stops with an InputError after them (False).

    Records end where lenient csv.reader, reading the text whole, ends them. A record over
    the limit is refused, however it is quoted after the lines csv.reader was given of it;
    those, and a record within the limit, must parse in strict mode; and the input must
    not end inside a quoted field.
    """
    lines = [m.group() for m in re.finditer(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)]
    rows = csv.reader(lines)
    expected: list[tuple[int, object, object]] = []
    end = 0
    for row in rows:
        start, end = end + 1, rows.line_num
        record = lines[start - 1 : end]
        # Open at the end of the input if one more line break is still inside the record.
        if end == len(lines) and len(list(csv.reader([*record, "\n"]))) == 1:
            return expected, False
        sizes = list(accumulate(len(line) for line in record))
        given = record[: bisect_right(sizes, SMALL_ROW)]
        try:
            list(csv.reader(given, strict=True))
        except csv.Error as exc:
            if given == record or "end of data" not in str(exc):
                return expected, False
        if given != record:
            limit = f"is {sizes[-1]} characters, more than the row limit of {SMALL_ROW}"
            expected.append((start + 1, {}, limit))
            continue
        if row and (len(row) > 1 or row[0].strip()):
            problem = f"has {len(row)} cells but the header has 2 columns"
            fields: dict[str, object] = dict(zip(header, row, strict=False))
            if len(row) > 2:  # the cells past the header are kept for the report
                fields["cells_past_header"] = row[2:]
            expected.append((start + 1, fields, problem if len(row) > 2 else None))
    return expected, True


BREAKS = st.sampled_from(["\n", "\r\n", "\r"])
# Every character csv.reader treats specially, alone and in runs long enough to pass the
# limit, and records of the shapes that end where a naive reader would not: line breaks
# in quotes, doubled quotes, a stray quote before an opening one, lines one either side
# of the read limit (so a CRLF can be cut in two), text after a closing quote.
CSV_PIECES = st.sampled_from(['"', '""', ",", "\n", "\r", "\r\n", "a", " "]) | st.builds(
    lambda c, n: c * n, st.sampled_from(["x", '"', ",", "\n"]), st.integers(10, 3 * SMALL_ROW)
)
CSV_RECORDS = st.one_of(
    st.just("a,b"),
    st.sampled_from([SMALL_ROW - 2, SMALL_ROW - 1, SMALL_ROW, SMALL_ROW + 1]).map("x".__mul__),
    st.builds(lambda n, brk: f'"{("y" + brk) * n}",b', st.integers(1, SMALL_ROW), BREAKS),
    st.builds(lambda n, brk: f'a"b,"{"z" * n}{brk}"', st.integers(0, 2 * SMALL_ROW), BREAKS),
    st.builds(lambda n: '"' + '""' * n + '",b', st.integers(0, SMALL_ROW)),
    st.builds(lambda n: f'"{"q" * n}"x,b', st.integers(0, 2 * SMALL_ROW)),
)
CSV_BODIES = st.lists(st.tuples(CSV_RECORDS | CSV_PIECES, BREAKS | st.just("")), max_size=12).map(
    lambda items: "".join(record + brk for record, brk in items)
)


@PROPERTY_SETTINGS
@given(CSV_BODIES, st.booleans())
# A CRLF cut in two by the read limit; a quoted cell over many lines; a stray quote, then
# an opening one; text after a closing quote (strict csv stops there, but not before the
# record is over the limit); no line break at the end; a quote never closed.
@example(body="x" * SMALL_ROW + "\r\na,b\r\n", compressed=False)
@example(body='"' + "y\n" * SMALL_ROW + '",b\nc,d\n', compressed=False)
@example(body='a"b,"' + "z" * SMALL_ROW + '\n"\nc,d\n', compressed=False)
@example(body='"q"x' + "," * SMALL_ROW + "\nc,d\n", compressed=False)
@example(body="a,b\n" + "x" * 2 * SMALL_ROW, compressed=False)
@example(body='a,b\n"' + "y" * 2 * SMALL_ROW, compressed=False)
def test_csv_records_over_the_row_limit_are_cut_off_where_csv_would_end_them(
    tmp_path: Path, body: str, compressed: bool
) -> None:
    # Whatever the quoting, the reader yields what csv.reader yields reading the file
    # whole, except that each record over the limit is refused: the same records, on the
    # same lines, and the rows after a refused one are read.
    expected, whole = _reference(body, ["a", "b"])
    source = _write(tmp_path / "t.csv", f"a,b\n{body}".encode(), compressed)
    got: list[tuple[int, object, object]] = []
    with pytest.MonkeyPatch.context() as patch:
        _small_limits(patch)
        try:
            got.extend((r.line, r.fields, r.problem) for r in Reader(source))
        except InputError:
            assert not whole
        else:
            assert whole
    assert got == expected


@PROPERTY_SETTINGS
@given(
    st.lists(st.integers(0, 3 * SMALL_ROW), max_size=8),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.booleans(),
)
def test_ndjson_lines_over_the_row_limit_are_refused_and_skipped(
    tmp_path: Path, widths: list[int], terminator: bytes, last_ended: bool, compressed: bool
) -> None:
    lines = [b'{"n": "' + b"x" * width + b'"}' + terminator for width in widths]
    if lines and not last_ended:
        lines[-1] = lines[-1].rstrip()
    expected = [
        (number, {}, f"is {len(line)} bytes, more than the row limit of {SMALL_ROW}")
        if len(line) > SMALL_ROW
        else (number, {"n": "x" * width}, None)
        for number, (line, width) in enumerate(zip(lines, widths, strict=True), start=1)
    ]
    source = _write(tmp_path / "t.ndjson", b"".join(lines), compressed)
    with pytest.MonkeyPatch.context() as patch:
        _small_limits(patch)
        assert _read(source) == expected


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.sampled_from(
            [
                b'{"a":1}',
                b'{"a":"\r"}',
                b"\r",
                b"",
                b"  ",
                b'{"b":2}\r',
                b"\xef\xbb\xbf{}",
                b"x" * 50,
            ]
        ),
        max_size=8,
    ),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.sampled_from([b"", b"\xef\xbb\xbf"]),
    st.integers(1, 64) | st.just(1 << 20),
)
def test_ndjson_lines_are_the_same_whatever_the_size_of_a_read(
    tmp_path: Path, pieces: list[bytes], end: bytes, last_ended: bool, bom: bytes, size: int
) -> None:
    # Only a line feed ends a line: a lone carriage return is inside one. A line over the
    # limit is refused whatever it straddles, and the BOM is cut from the first line.
    data = bom + end.join(pieces) + (end if pieces and last_ended else b"")
    *ended, last = data.split(b"\n")
    lines = [line + b"\n" for line in ended] + ([last] if last else [])
    expected = []
    for number, line in enumerate(lines, start=1):
        if len(line) > SMALL_ROW:
            expected.append((number, {}, f"is {len(line)} bytes, more than the row limit of 40"))
            continue
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        record = ndjson_record("t.ndjson", number, line)
        if record is not None:
            expected.append((number, record.fields, record.problem))
    source = _write(tmp_path / "t.ndjson", data, compressed=False)
    with pytest.MonkeyPatch.context() as patch:
        _small_limits(patch)
        patch.setattr(inventory, "NDJSON_BLOCK_BYTES", size)
        assert _read(source) == expected


def _nested(levels: int, kinds: list[bool]) -> object:
    """A value of ``levels`` levels of objects (True) and arrays (False), in turn."""
    value: object = "leaf"
    for level in range(levels):
        value = {"k": value} if kinds[level % len(kinds)] else [value]
    return value


@PROPERTY_SETTINGS
@given(
    st.sampled_from([MAX_DEPTH, MAX_DEPTH + 1]) | st.integers(1, 2 * MAX_DEPTH),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.dictionaries(NAME.filter(lambda name: name != "deep"), CELL, max_size=3),
)
def test_ndjson_rows_nested_past_the_depth_limit_are_refused(
    tmp_path: Path, depth: int, kinds: list[bool], flat: dict[str, str]
) -> None:
    # ``depth`` counts the row's own object; the deep value sits among flat ones.
    row = {**flat, "deep": _nested(depth - 1, kinds)}
    source = _write(tmp_path / "t.ndjson", orjson.dumps(row) + b"\n", compressed=False)
    ((_, fields, problem),) = _read(source)
    if depth > MAX_DEPTH:
        assert problem == f"nests deeper than the limit of {MAX_DEPTH} levels"
        assert fields == flat
    else:
        assert (fields, problem) == (row, None)


def test_a_byte_order_mark_alone_before_the_header_is_a_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbf\nproject_id,host\np1,10.0.0.1\n")
    assert _read(Input(str(path), Format.CSV, gzip=False)) == [
        (3, {"project_id": "p1", "host": "10.0.0.1"}, None)
    ]


_REPORT_HEADER = (
    "source,line,outcome,error_code,error_msg,http_status,attempts,duplicate_of,request_id,"
    "project_id,instance_id,vpc_channel_id,host,port,weight,is_backup,member_group_name,"
    "status,ecs_id,ecs_name,extra\n"
)


def test_a_fed_back_rows_extra_keys_are_its_own_whatever_else_refuses_it(
    tmp_path: Path,
) -> None:
    # Refused for its U+FFFD, the row's extra keys are still its own: reported again.
    path = tmp_path / "errors.csv"
    row = 'a.ndjson,3,invalid,invalid.row,x,,0,,,p,i,c,10.0.0.1,,,,g\ufffd,,,,"{""owner"":""ann""}"'
    path.write_text(_REPORT_HEADER + row + "\n")
    ((_, fields, problem),) = _read(detect(str(path)))
    assert problem is not None and "U+FFFD" in problem
    assert fields["owner"] == "ann"


@pytest.mark.parametrize("spill", [b"5", b'"abc"', b"[1]", b'{"a":1}'])
def test_a_report_row_with_cells_past_its_header_of_any_shape_is_refused(spill: bytes) -> None:
    # Edited by hand, or past the cell limit: refused, never a crash.
    head = (
        b'{"source":"a.csv","line":2,"outcome":"invalid","error_code":"invalid.row",'
        b'"error_msg":"x","http_status":null,"attempts":0,"duplicate_of":"","request_id":"",'
        b'"host":"10.0.0.1","cells_past_header":'
    )
    for raw in (head + spill + b"}", head + spill + b',"n":"' + b"x" * 70_000 + b'"}'):
        record = ndjson_record("e.ndjson", 1, raw)
        assert record is not None and record.problem is not None
        assert isinstance(record.fields["cells_past_header"], list)
