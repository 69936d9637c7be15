"""The fast lane (worker.fastlane) against the reference rules, row for row, byte for byte.

For random inventories (valid and invalid values of every field, padding, case, IPv6 and
names, duplicates, user columns with formula characters, quotes, CRLF, blank and
whitespace lines, ragged rows, bad UTF-8, absent columns filled by defaults) read in
blocks of random sizes, the fast lane must decide as the reference path does:

- ``run``: the same posts per channel (request body bytes), the same errors report and,
  once each post is answered (in order, out of order, with members missing, with cells
  a spreadsheet would run), the same landed report, byte for byte;
- ``plan``: the same counts per channel, errors report, dedupe state and tally, CSV and
  NDJSON;
- batching a channel's run at once is batching item by item; the typed decoder of 201
  answers says what ``classify`` says of every answer it reads.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clirun import Finished, cli_env, run_cli
from worker import inventory
from worker.batching import Batcher, Run
from worker.config import Format
from worker.fastlane import Block, FastStream, ahead, helper, parts
from worker.fastlane import ndjson as ndjson_lane
from worker.fastlane.csvblocks import CsvBlocks
from worker.fastlane.ndjson import NdjsonBlocks
from worker.intake import FastEntry, Intake
from worker.inventory import Input, InputError, Reader, Record, Stream
from worker.ledger import Ledger, SettledTwice
from worker.limits import OutOfReach
from worker.members import CHANNEL_FIELDS, MEMBER_FIELDS, Channel
from worker.outcomes import Outcome, Result
from worker.planning import Job, Post, Upserts, make_plan
from worker.protocol import Kind, Landed, Op, Verdict, classify, landed_answer, member_address
from worker.reports import ReportWriter, extra_columns

CI = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HOSTS = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.1",
    "192.168.1.255",
    "010.0.0.1",
    "10.0.0.256",
    " 10.0.0.3",
    "10.0.0.3 ",
    "2001:db8::1",
    "2001:DB8:0::1",
    "[2001:db8::1]",
    "Host.Example.",
    "host.example",
    "1.2.3",
    "",
    "a b",
    "é.example",
    "0.0.0.0",
    "127.0.0.1",
    "169.254.1.1",
    "224.0.0.1",
    "255.255.255.255",
    "1.0.0.0",
]
INTS = [
    "80",
    "8080",
    "080",
    "0",
    "65535",
    "65536",
    "-1",
    "+5",
    " 7 ",
    "",
    "eighty",
    "1.0",
    "10000",
    "10001",
    "2",
    "1",
    "3",
    "99999999999999999999999",
]
BOOLS = ["true", "false", "TRUE", "Yes", "no", "0", "1", "", "maybe", " true "]
GROUPS = ["group-1", "group-2", "grp.x", "", "bad/name", "名前", " group-1", "g" * 65, "-g"]
IDS = ["p1", "inst0001", "chan-1", "", "bad/chan", " c1 ", "c" * 65, "x_y", "-c"]
ECS = ["", "", "", "ecs-1", "bad ecs", "i-123", " "]
CARRIED = ["CI1", "", "=1+1", "+x", "-5", "@a", "note", "'=x", "a;b", "\t1"]
SPECIAL = ['"quoted, cell"', 'a"b', '"x\ny"', '"x\ry"']
COLUMNS = [*CHANNEL_FIELDS, *MEMBER_FIELDS, "cmdb_id"]
VALUES = {
    "project_id": IDS,
    "instance_id": IDS,
    "vpc_channel_id": IDS,
    "host": HOSTS,
    "port": INTS,
    "weight": INTS,
    "status": INTS,
    "is_backup": BOOLS,
    "member_group_name": GROUPS,
    "ecs_id": ECS,
    "ecs_name": [*ECS, "name.1"],
    "cmdb_id": CARRIED,
}


@st.composite
def inventories(draw: st.DrawFn) -> tuple[bytes, dict[str, str], int]:
    """A CSV inventory, the defaults it is read with, and a block size."""
    columns = [c for c in COLUMNS if c in ("host", "vpc_channel_id") or draw(st.integers(0, 3))]
    defaults = {}
    if "project_id" not in columns or "instance_id" not in columns:
        defaults = {"project_id": "dp", "instance_id": "di"}
    valid = draw(st.sampled_from([0.8, 0.95, 1.0]))
    specials = draw(st.integers(0, 6)) == 0
    ragged = draw(st.integers(0, 9)) == 0
    lines = [",".join(columns)]
    for _ in range(draw(st.integers(0, 60))):
        if ragged and draw(st.integers(0, 40)) == 0:
            lines.append(draw(st.sampled_from(["", "   ", ",,,"])))
            continue
        cells = []
        for c in columns:
            if draw(st.floats(0, 1)) < valid:
                cell = {
                    "host": f"10.0.{draw(st.integers(0, 3))}.{draw(st.integers(0, 9))}",
                    "port": "80",
                    "weight": str(draw(st.integers(0, 3))),
                    "is_backup": "false",
                    "member_group_name": "group-1",
                    "status": "1",
                    "ecs_id": "",
                    "ecs_name": "",
                    "cmdb_id": f"CI{draw(st.integers(0, 9))}",
                    "project_id": "p1",
                    "instance_id": "i1",
                    "vpc_channel_id": draw(st.sampled_from(["c1", "c2", "c3"])),
                }[c]
            else:
                cell = draw(st.sampled_from(VALUES[c]))
            if specials and draw(st.integers(0, 20)) == 0:
                cell = draw(st.sampled_from(SPECIAL))
            cells.append(cell)
        if ragged and draw(st.integers(0, 20)) == 0:
            cells.append("extra")
        if ragged and draw(st.integers(0, 20)) == 0 and len(cells) > 1:
            cells.pop()
        lines.append(",".join(cells))
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    data = newline.join(lines).encode()
    if draw(st.booleans()):
        data += newline.encode()
    if draw(st.integers(0, 30)) == 0:
        data += (b"" if data.endswith(b"\n") else newline.encode()) + b"10.0.0.9\xff,bad\n"
    return data, defaults, draw(st.integers(16, 600))


def _user_columns(path: Path) -> list[str]:
    header = Reader(Input(str(path), Format.CSV, False))
    header.close()
    return extra_columns([header.columns], False)


def _sending_items(path: Path, fmt: Format, intake: Intake, extra: list[str], block: int):
    def lane(reader: Reader) -> CsvBlocks | NdjsonBlocks:
        if fmt is Format.CSV:
            return CsvBlocks(reader, intake, extra=extra, block_bytes=block)
        return NdjsonBlocks(reader, intake, sending=True, block_bytes=block)

    return FastStream([Reader(Input(str(path), fmt, False))], lane).items()


def _answer(post: Post, style: int) -> list[Landed]:
    """The service's 201 for ``post``: every member in order, or reordered, one left out,
    or with cells that need quoting, escaping or neutralising, by ``style``."""
    members = [
        Landed(
            id=("=" if style == 3 and n == 0 else "") + f"m-{entry.address}",
            host=entry.address,
            member_group_id='g,"1' if style == 4 else "g1",
            create_time=None if style == 5 else "2026-01-01T00:00:00Z",
        )
        for n, entry in enumerate(post.entries)
    ]
    if style == 1:
        members.reverse()
    if style == 2 and len(members) > 1:
        members.pop(1)
    return members


def _run(
    path: Path,
    defaults: dict[str, str],
    directory: Path,
    fast: int | None,
    style: int,
    fmt: Format = Format.CSV,
):
    """Feed a run's planner the inventory (through the fast lane in blocks of ``fast``
    bytes, or the reference), answer every post, and give back what it left."""
    extra = _user_columns(path) if fmt is Format.CSV else extra_columns([], True)
    directory.mkdir()
    writer = ReportWriter(directory, fmt, extra)
    ledger = Ledger(writer)
    intake = Intake(defaults)
    planner = Upserts(intake, ledger, 3, 1 << 20)
    jobs: list[Job] = []
    if fast is None:
        for record in Reader(Input(str(path), fmt, False)):
            jobs += planner.feed(record)
    else:
        for part in parts(_sending_items(path, fmt, intake, extra, fast), records=5, size=7):
            if isinstance(part, list):
                for record in part:
                    jobs += planner.feed(record)
            else:
                jobs += planner.feed_block(part.block, part.start, part.stop)
    for end in planner.end_of_input():
        jobs += end
    per_channel: dict[Channel, list[Post]] = {}
    for job in jobs:
        assert isinstance(job, Post)
        per_channel.setdefault(job.channel, []).append(job)
    posts = {
        channel: [[entry.body for entry in post.entries] for post in found]
        for channel, found in per_channel.items()
    }
    for channel in sorted(per_channel):
        for post in per_channel[channel]:
            answer = _answer(post, style)
            payload = answer if fast is not None else [member.as_dict() for member in answer]
            post.tried()
            planner.done(post, Verdict(Kind.OK, 201, payload=payload))
    ledger.close()
    claims = {tuple(k): dict(v) for k, v in intake._dedupe._channels.items()}
    reports = {p.name: p.read_bytes() for p in directory.iterdir()}
    return posts, reports, claims, ledger.tally.as_dict()


@CI
@given(inventories(), st.integers(0, 5))
def test_a_run_through_the_fast_lane_is_the_reference_run(case, style) -> None:
    data, defaults, block = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        path.write_bytes(data)
        want = _run(path, defaults, Path(tmp) / "a", None, style)
        got = _run(path, defaults, Path(tmp) / "b", block, style)
        assert got == want


def _plan(
    path: Path,
    fmt: Format,
    directory: Path,
    fast: int | None,
    batch: tuple[int, int],
    every: int | None = None,
):
    """A plan's counts, errors report, claims and tally: by the reference (``fast`` None),
    or through the fast lane in blocks of ``fast`` bytes, and with a helper process that
    decides every other span of about ``every`` bytes, when given."""
    directory.mkdir()
    writer = ReportWriter(directory, fmt, ["extra"] if fmt is Format.NDJSON else [])
    ledger = Ledger(writer)
    intake = Intake({"project_id": "dp", "instance_id": "di"})
    batcher: Batcher[None] = Batcher(*batch)
    reader = Reader(Input(str(path), fmt, False))
    if fast is None:
        items = Stream([reader])
    elif fmt is Format.CSV:
        items = FastStream([reader], lambda r: CsvBlocks(r, intake, block_bytes=fast)).items()
    elif every is not None:
        lane = partial(helper.planned, intake=intake, block_bytes=fast, least=0, every=every)
        items = FastStream([reader], lane).items()
    else:
        items = FastStream([reader], lambda r: NdjsonBlocks(r, intake, block_bytes=fast)).items()
    plan = make_plan(items, intake, batcher, ledger)
    ledger.close()
    counts = {
        str(k): (v.members, v.duplicates, v.invalid, v.requests) for k, v in plan.channels.items()
    }
    claims = {tuple(k): dict(v) for k, v in intake._dedupe._channels.items()}
    errors = (directory / f"errors.{fmt.value}").read_bytes()
    return counts, errors, claims, ledger.tally.as_dict()


BATCHES = st.tuples(st.integers(1, 5), st.sampled_from([200, 400, 1 << 20]))


@CI
@given(inventories(), BATCHES)
def test_a_csv_plan_through_the_fast_lane_is_the_reference_plan(case, batch) -> None:
    data, _, block = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        path.write_bytes(data)
        want = _plan(path, Format.CSV, Path(tmp) / "a", None, batch)
        assert _plan(path, Format.CSV, Path(tmp) / "b", block, batch) == want


NDJSON_VALUES: dict[str, list[object]] = {
    "project_id": ["p1", "", None, 5, "bad/x"],
    "instance_id": ["i1", "i2", " i1 ", None],
    "vpc_channel_id": ["c1", "c2", None, "", ["c1"]],
    "host": [
        "10.0.0.1",
        "10.0.0.01",
        "2001:db8::1",
        "h.example",
        7,
        None,
        "",
        " 10.0.0.3",
        "127.0.0.5",
    ],
    "port": [80, "80", 80.0, True, None, -1, 70000, "x", 2**63 - 1],
    "weight": [1, 0, "1", 10001, None, 1.5],
    "is_backup": [False, True, "true", 1, 0, "maybe", None],
    "member_group_name": ["group-1", "g/x", 3, None, "名前"],
    "status": [1, 2, 3, "1", None, True],
    "ecs_id": [None, "", "i-1", 5],
    "ecs_name": [None, "", "n1"],
    "cmdb_id": ["CI1", "=1", None, {"a": 1}, 1e300, "é"],
    "outcome": [None, "duplicate", "succeeded"],
    "source": [None, "x.csv"],
    # A key some rows have: the front end learns it from the first that does.
    "rack": [None, None, "r1", 7, 2.5, True],
}
# Lines whose bytes orjson and msgspec might read differently.
ODD_LINES = [
    b"",
    b"  ",
    b"[1,2]",
    b"null",
    b"{bad",
    b"3",
    b'{"host":"10.0.0.7","n":1e999}',
    b'{"host":"10.0.0.7","n":"\\ud800"}',
    b'{"host":"10.0.0.7","n":"\xff"}',
    b'{"ho\\u0073t":"10.0.0.8"}',
    b'{"host":"10.0.0.9","n":"a\tb"}',
    b'{"host":"10.0.1.1","host":5}',
    b'{"host":"10.0.1.2","n":[[[[1]]]]}',
    b'{"host":"10.0.1.3"} x',
    b'{"host":"10.0.1.4","n":-0}',
    b'{"host":"10.0.1.5","port":1180591620717411303424}',
    b'{"host":"10.0.1.6","n":1180591620717411303424}',
    # Out of a double's range (orjson refuses them) by their digits or by their exponent.
    b'{"host":"10.0.1.7","n":1' + b"0" * 250 + b"e99}",
    b'{"host":"10.0.1.8","n":' + b"9" * 309 + b"}",
    b'{"host":"10.0.1.9","n":1e308}',
    b'{"host":"10.0.2.1","n":-1.8e308}',
    # Two objects on a line; a brace in a string beside a line with none; a bare value.
    b'{"host":"10.0.2.2"}{"host":"10.0.2.3"}',
    b'{"host":"10.0.2.4","n":"{"}',
    b'"10.0.2.5"',
    b'"{"',
    b'{"host":"10.0.2.6","n":NaN}',
    # Where pyarrow's or polars' JSON readers part from orjson (a prototype's findings).
    b'{"host":"10.0.2.7","n":1.7976931348623159e308}',
    b'{"host":"10.0.2.8","n":' + b"1" * 330 + b"}",
    b'{"host":"10.0.2.9","host":"10.0.3.1"}',
    b'{"host":"10.0.3.2","n":"\xed\xa0\x80"}',
    b'{"host":"10.0.3.3","n":-Infinity}',
    # Valid rows but for an integer orjson reads as a double, or refuses: under a key given
    # twice (msgspec keeps the last), under a user's key learnt from the rows before.
    b'{"project_id":"p1","instance_id":"i1","vpc_channel_id":"c1","host":"10.0.3.4","port":'
    + b"9" * 309
    + b',"port":80}',
    b'{"project_id":"p1","instance_id":"i1","vpc_channel_id":"c1","host":"10.0.3.5","rack":'
    + b"9" * 309
    + b"}",
    b'{"project_id":"p1","instance_id":"i1","vpc_channel_id":"c1","host":"10.0.3.6",'
    b'"rack":18446744073709551615}',
]


@st.composite
def ndjson(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.integers(0, 12)) == 0:
            lines.append(draw(st.sampled_from(ODD_LINES)))
            continue
        row: dict[str, object] = {}
        for key, options in NDJSON_VALUES.items():
            if draw(st.integers(0, 6)):
                value = options[0] if draw(st.integers(0, 4)) else draw(st.sampled_from(options))
                if key == "host" and value == "10.0.0.1":
                    value = f"10.0.0.{draw(st.integers(1, 6))}"
                if value is not None or draw(st.booleans()):
                    row[key] = value
        if draw(st.integers(0, 4)) == 0:  # the keys in another order
            row = dict(reversed(row.items()))
        text = orjson.dumps(row)
        if row and draw(st.integers(0, 30)) == 0:
            text = text[:-1] + b',"' + next(iter(row)).encode() + b'":"dup"}'
        lines.append(text)
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = newline.join(lines) + (newline if draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.integers(0, 20)) == 0 else b"") + data


@CI
@given(ndjson(), BATCHES, st.sampled_from([1, 100, 1000, 1 << 20]))
def test_an_ndjson_plan_through_the_fast_lane_is_the_reference_plan(data, batch, block) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.ndjson"
        path.write_bytes(data)
        want = _plan(path, Format.NDJSON, Path(tmp) / "a", None, batch)
        assert _plan(path, Format.NDJSON, Path(tmp) / "b", block, batch) == want


# A helper process a plan: fewer examples.
@settings(CI, max_examples=25)
@given(ndjson(), BATCHES, st.sampled_from([1, 100, 1 << 20]), st.integers(1, 300))
def test_an_ndjson_plan_with_a_helper_process_is_the_reference_plan(
    data, batch, block, every
) -> None:
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(helper, "_cores", lambda: 2):
        path = Path(tmp) / "in.ndjson"
        path.write_bytes(data)
        want = _plan(path, Format.NDJSON, Path(tmp) / "a", None, batch)
        assert _plan(path, Format.NDJSON, Path(tmp) / "b", block, batch, every) == want


def test_a_plan_with_a_helper_takes_its_rows_in_order_and_rereads_a_loser_of_its_own(
    tmp_path,
) -> None:
    # Every address given again in a later span, some in the same span, one line too long
    # and a blank line: each span's rows are numbered from where the last ended, and a
    # row of the helper's spans that loses its dedupe is read again from the file.
    rows = [
        orjson.dumps({"vpc_channel_id": f"c{n % 3}", "host": f"10.0.{n % 40}.1", "weight": n})
        for n in range(400)
    ]
    rows[150] = b'{"host":"' + b"x" * inventory.MAX_ROW_BYTES + b'"}'
    rows[250] = b""
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(rows) + b"\n")
    with mock.patch.object(helper, "_cores", lambda: 2):
        want = _plan(path, Format.NDJSON, tmp_path / "a", None, (5, 1 << 20))
        for every in (500, 2000):
            got = _plan(path, Format.NDJSON, tmp_path / f"b{every}", 1 << 20, (5, 1 << 20), every)
            assert got == want


def test_a_file_changed_under_a_plan_with_a_helper_breaks_where_the_helper_reads(
    tmp_path,
) -> None:
    rows = [orjson.dumps({"vpc_channel_id": "c1", "host": f"10.0.{n}.1"}) for n in range(200)]
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(rows) + b"\n")
    intake = Intake({"project_id": "dp", "instance_id": "di"})
    reader = Reader(Input(str(path), Format.NDJSON, False))
    with mock.patch.object(helper, "_cores", lambda: 2):
        items = helper.planned(reader, intake, least=0, every=2000)
        first = next(items)  # of the first span, this process's; the helper has started
        with path.open("ab") as handle:
            handle.write(rows[0] + b"\n")
        taken = [first]
        with pytest.raises(InputError, match="changed while it was read") as broke:
            taken.extend(items)
    reader.close()
    # The rows before the break are this process's first span, whole.
    spans = Reader(Input(str(path), Format.NDJSON, False)).spans(2000)
    assert spans is not None
    assert sum(item.count if isinstance(item, Block) else 1 for item in taken) == len(
        path.read_bytes()[: spans[1].start].splitlines()
    )
    assert broke.value.source == str(path)


def test_a_helper_that_crashes_says_why_and_one_that_ends_before_its_work_says_how(
    tmp_path,
) -> None:
    with helper._helper({"path": None}) as messages:
        kind, said = next(messages)
    assert kind == "crash"
    assert "KeyError: 'label'" in said
    with (tmp_path / "err").open("w+b") as errors:
        gone = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stderr.write('gone'); sys.exit(3)"],
            stderr=errors,
        )
        assert list(helper._or_why(iter(()), gone, errors)) == [
            ("crash", "it ended (exit status 3) before its work was done\ngone")
        ]


@CI
@given(ndjson(), st.integers(0, 5), st.sampled_from([1, 100, 1000, 1 << 20]))
def test_an_ndjson_run_through_the_fast_lane_is_the_reference_run(data, style, block) -> None:
    defaults = {"project_id": "dp", "instance_id": "di"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.ndjson"
        path.write_bytes(data)
        want = _run(path, defaults, Path(tmp) / "a", None, style, Format.NDJSON)
        got = _run(path, defaults, Path(tmp) / "b", block, style, Format.NDJSON)
        assert got == want


@pytest.mark.parametrize("line", ODD_LINES[-3:])
def test_an_integer_orjson_reads_otherwise_sends_its_row_to_the_reference(line: bytes) -> None:
    # The line before teaches the lane the user's key.
    first = (
        b'{"project_id":"p1","instance_id":"i1","vpc_channel_id":"c1","host":"10.0.3.9","rack":1}'
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.ndjson"
        path.write_bytes(first + b"\n" + line + b"\n")
        want = _plan(path, Format.NDJSON, Path(tmp) / "a", None, (100, 1 << 20))
        assert _plan(path, Format.NDJSON, Path(tmp) / "b", 1 << 20, (100, 1 << 20)) == want
        want = _run(path, {}, Path(tmp) / "c", None, 0, Format.NDJSON)
        assert _run(path, {}, Path(tmp) / "d", 1 << 20, 0, Format.NDJSON) == want


_IDS_JSON = b'"project_id":"p1","instance_id":"i1","vpc_channel_id":"c1"'
_LANDED_JSON = (
    b'"source":"s","line":1,"action":"created","member_id":"m","member_group_id":"g",'
    b'"create_time":"t","attempts":1'
)


@pytest.mark.parametrize(
    "lines",
    [
        # Two usable addresses in one host, with an escaped line break, or a raw one (a
        # string over two lines, the second with two objects: as many braces as lines).
        [b"{" + _IDS_JSON + b',"host":"10.0.4.1\\n10.0.4.2"}'],
        [
            b"{" + _IDS_JSON + b',"host":"10.0.4.3',
            b'10.0.4.4"}{' + _IDS_JSON + b',"host":"10.0.4.5"}',
        ],
        # A blank line and a line with two objects: as many braces as lines, and as many
        # objects (decode_lines passes over a blank line), but not one a line.
        *(
            [blank, b"{" + _IDS_JSON + b',"host":"10.0.5.9"}' + gap + b"{" + _IDS_JSON + b"}"]
            for blank in (b"", b" ", b"\t", b"\r")
            for gap in (b"", b" ")
        ),
        # A line with two objects, with no blank line: one row more than lines.
        *(
            [
                b"{" + _IDS_JSON + b',"host":"10.0.5.12"}',
                b"{" + _IDS_JSON + b',"host":"10.0.5.13"}' + gap + b"{" + _IDS_JSON + b"}",
            ]
            for gap in (b"", b" ")
        ),
        # A success report's row, fed back: its keys keep their names, and a spilt cell
        # refuses it.
        [b"{" + _IDS_JSON + b',"host":"10.0.5.10",' + _LANDED_JSON + b"}"],
        [b"{" + _IDS_JSON + b',"host":"10.0.5.11",' + _LANDED_JSON + b',"cells_past_header":"x"}'],
        # An ECS member, a null ECS field, a report's outcome (null or not).
        [b"{" + _IDS_JSON + b',"host":"10.0.4.6","ecs_id":"i-1","ecs_name":"n1"}'],
        [b"{" + _IDS_JSON + b',"host":"10.0.4.7","ecs_id":null,"ecs_name":null}'],
        [b"{" + _IDS_JSON + b',"host":"10.0.4.8","outcome":null}'],
        [b"{" + _IDS_JSON + b',"host":"10.0.4.9","outcome":"duplicate"}'],
    ],
)
def test_rows_the_lane_must_not_take_whole_are_the_references(lines: list[bytes]) -> None:
    # Among plain rows, so that the read is decoded whole but for them.
    plain = [b"{" + _IDS_JSON + f',"host":"10.0.5.{n}"}}'.encode() for n in range(1, 9)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.ndjson"
        path.write_bytes(b"\n".join([*plain[:4], *lines, *plain[4:]]) + b"\n")
        want = _plan(path, Format.NDJSON, Path(tmp) / "a", None, (100, 1 << 20))
        assert _plan(path, Format.NDJSON, Path(tmp) / "b", 1 << 20, (100, 1 << 20)) == want
        want = _run(path, {}, Path(tmp) / "c", None, 0, Format.NDJSON)
        assert _run(path, {}, Path(tmp) / "d", 1 << 20, 0, Format.NDJSON) == want


def test_an_ndjson_plan_past_the_caches_bounds_and_the_row_limit_is_the_reference_plan(
    tmp_path, monkeypatch
) -> None:
    # More channels and member values than the caches hold, and a line over the row limit.
    monkeypatch.setattr(ndjson_lane, "CACHE_MAX", 3)
    monkeypatch.setattr(inventory, "MAX_ROW_BYTES", 200)
    rows = [
        orjson.dumps({"vpc_channel_id": f"c{n % 7}", "host": f"10.0.0.{n}", "weight": n % 5})
        for n in range(1, 60)
    ]
    rows[30] = b'{"host":"10.0.1.1","n":"' + b"x" * 300 + b'"}'
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(rows) + b"\n")
    want = _plan(path, Format.NDJSON, tmp_path / "a", None, (3, 1 << 20))
    got = _plan(path, Format.NDJSON, tmp_path / "b", 500, (3, 1 << 20))
    assert got == want
    assert got[3]["invalid"] == 1


def test_a_number_out_of_a_doubles_range_in_a_users_key_is_the_references_to_refuse(
    tmp_path,
) -> None:
    # 10**250 * 10**99 overflows a double with a two-digit exponent, and no run of 300
    # digits: the front end once skipped such a value unjudged and planned the row.
    good = b'{"vpc_channel_id":"c1","host":"10.0.0.1","port":80}\n'
    huge = b'{"vpc_channel_id":"c1","host":"10.0.0.2","port":80,"n":1' + b"0" * 250 + b"e99}\n"
    path = tmp_path / "in.ndjson"
    path.write_bytes(good * 3 + huge)
    want = _plan(path, Format.NDJSON, tmp_path / "a", None, (100, 1 << 20))
    got = _plan(path, Format.NDJSON, tmp_path / "b", 1 << 20, (100, 1 << 20))
    assert got == want
    assert got[3]["invalid"] == 1 and b"not valid JSON" in got[1]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(st.tuples(st.integers(0, 4), st.integers(1, 30)), max_size=20),
    st.lists(st.tuples(st.integers(0, 4), st.integers(1, 30)), min_size=1, max_size=60),
)
def test_feeding_a_channel_run_at_once_is_feeding_one_by_one(limit, before, block) -> None:
    cap = 1 << 20
    one, runs = Batcher[object](limit, cap), Batcher[object](limit, cap)
    for n, (c, size) in enumerate(before):  # the same open batches before the block
        one.feed(Channel("p", "i", f"c{c}"), ("before", n), size)
        runs.feed(Channel("p", "i", f"c{c}"), ("before", n), size)
    want = []
    for i, (c, size) in enumerate(block):
        want += [
            (b.channel, b.items, b.body_bytes)
            for b in one.feed(Channel("p", "i", f"c{c}"), i, size)
        ]
    per: dict[int, list[int]] = {}
    for i, (c, _) in enumerate(block):
        per.setdefault(c, []).append(i)
    fed = [
        Run(Channel("p", "i", f"c{c}"), list(rows), [block[i][1] for i in rows], rows)
        for c, rows in sorted(per.items())
    ]
    assert runs.by_count((run.channel for run in fed), 30)
    got = [(b.channel, b.items, b.body_bytes) for b in runs.feed_runs(fed)]
    assert got == want
    assert [(b.channel, b.items, b.body_bytes) for b in runs.flush()] == [
        (b.channel, b.items, b.body_bytes) for b in one.flush()
    ]


MEMBER = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["m1", "", 5, None, "=x", "a,b"]),
        "host": st.sampled_from(["10.0.0.1", "10.0.0.01", "2001:DB8::1", 7, None, ""]),
        "ecs_id": st.sampled_from(["i-1", " i-1 ", None, 3]),
        "member_group_id": st.sampled_from(["g1", "", None, 1]),
        "create_time": st.sampled_from(["2026-01-01T00:00:00Z", None, 0]),
        "port": st.sampled_from([80, 1e300, "x", [1, [2]], {"a": None}]),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries({"members": st.lists(MEMBER, max_size=5)}),
        st.lists(MEMBER, max_size=2),
        st.fixed_dictionaries({"members": st.just(None)}),
    ),
    st.sampled_from(["application/json", "application/json;charset=UTF-8", "text/html"]),
    st.sampled_from([201, 200, 400]),
    st.sampled_from([b"", b" ", b"\xff", b"x"]),
)
def test_the_typed_answer_decoder_says_what_classify_says(answer, kind, status, tail) -> None:
    body = orjson.dumps(answer) + tail
    fast = landed_answer(status, body, kind, "req-1")
    if fast is None:
        return
    reference = classify(Op.POST, status, body, content_type=kind, request_id="req-1")
    assert (fast.kind, fast.status, fast.request_id) == (Kind.OK, 201, "req-1")
    assert (reference.kind, reference.status, reference.request_id) == (Kind.OK, 201, "req-1")
    assert isinstance(reference.payload, list) and isinstance(fast.payload, list)

    def read(member: dict[str, object]) -> tuple[object, ...]:
        text = [
            v if isinstance(v, str) else ""
            for v in map(member.get, ("id", "member_group_id", "create_time"))
        ]
        return (member_address(member), *text)

    assert [read(m.as_dict()) for m in fast.payload] == [read(m) for m in reference.payload]


def test_the_answers_of_the_emulator_are_read_by_the_typed_decoder() -> None:
    body = orjson.dumps(
        {
            "total": 1,
            "size": 1,
            "members": [
                {
                    "host": "10.0.0.1",
                    "weight": 1,
                    "is_backup": False,
                    "member_group_name": "",
                    "status": 1,
                    "port": 80,
                    "ecs_id": "",
                    "ecs_name": "",
                    "id": "457c769f39d8644199c0e5bd",
                    "vpc_channel_id": "c",
                    "create_time": "2023-11-14T22:13:20Z",
                    "member_group_id": "",
                }
            ],
        }
    )
    verdict = landed_answer(201, body, "application/json", "")
    assert verdict is not None and isinstance(verdict.payload[0], Landed)


def _entry(line: int) -> FastEntry:
    record = Record("in.csv", line, {"vpc_channel_id": "c", "host": "10.0.0.1", "n": "x"})
    return FastEntry(
        Channel("p", "i", "c"),
        "10.0.0.1",
        b'{"host":"10.0.0.1"}',
        "in.csv,2,p,i,c,10.0.0.1,,,,,,,",
        ",x",
        b"",
        line,
        lambda raw, at: record,
    )


@pytest.mark.parametrize("first", ["landed", "row"])
def test_a_row_of_the_fast_lane_settled_twice_raises(first: str) -> None:
    ledger = Ledger(None)
    entry = _entry(2)
    aborted = Result(Outcome.ABORTED, error_code="x", error_msg="y")
    if first == "landed":
        ledger.settle_landed([entry], "")
        with pytest.raises(SettledTwice):
            ledger.settle(entry.row, aborted)
    else:
        ledger.settle(entry.row, aborted)
        with pytest.raises(SettledTwice):
            ledger.settle_landed([entry], "")
    with pytest.raises(SettledTwice):
        ledger.settle_landed([entry], "")
    assert ledger.tally.total == 1


def test_plain_inventories_take_the_fast_lane_and_a_quoted_row_costs_one_block(tmp_path) -> None:
    lines = ["project_id,instance_id,vpc_channel_id,host,port,weight,note"]
    lines += [
        f"p,i,c{n % 3},10.0.{n // 250}.{n % 250 + 1},8080,{n % 100},n{n}" for n in range(3000)
    ]
    lines[40] = lines[40].replace("n39", '"quoted, note"')
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n")
    front = CsvBlocks(Reader(Input(str(path), Format.CSV, False)), Intake({}), block_bytes=4096)
    rows = sum(item.count if isinstance(item, Block) else 1 for item in front)
    assert rows == 3000
    assert front.reference_blocks == 1 and front.fallback_at is None
    assert front.fast_rows == 3000 - front.slow_rows and front.slow_rows < 200


def _ndjson_reads(path: Path, lines: list[dict[str, object]]) -> NdjsonBlocks:
    """An NDJSON lane of ``lines``, read 4 KiB at a time to the end."""
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    reader = Reader(Input(str(path), Format.NDJSON, False))
    front = NdjsonBlocks(reader, Intake({}), block_bytes=4096)
    assert sum(item.count if isinstance(item, Block) else 1 for item in front) == len(lines)
    return front


def test_the_ndjson_lane_decodes_the_ids_it_has_seen_as_literals_until_too_many_are_new(
    tmp_path: Path,
) -> None:
    rows: list[dict[str, object]] = [
        {"project_id": "p", "instance_id": "i", "vpc_channel_id": f"c{n % 7}",
         "host": f"10.0.{n // 250}.{n % 250 + 1}", "member_group_name": f"g{n % 2}"}
        for n in range(3000)
    ]  # fmt: skip
    for row in rows[1500:]:
        row["rack"] = "r1"  # a key learnt midway
    repeating = _ndjson_reads(tmp_path / "repeating.ndjson", rows)
    # Every read decoded whole after the first, but the one that brings the key (if it
    # is decoded whole: not when its first line has no such key).
    assert repeating.whole_reads > 20
    assert repeating.interned_reads >= repeating.whole_reads - 2
    for n, row in enumerate(rows):
        row["vpc_channel_id"] = f"c{n // 40}"  # sorted by channel: new ids in every read
    sorted_ = _ndjson_reads(tmp_path / "sorted.ndjson", rows)
    assert sorted_.whole_reads > 20 and sorted_.interned_reads < 4


def test_the_rate_out_of_reach_is_told_once_when_the_worker_is_the_limit() -> None:
    check = OutOfReach(600, 64, window=5)
    samples = [
        check.observe(t, 0.95 * t, 340 * t, throttled=False, in_flight=20, ended=False)
        for t in range(0, 20)
    ]
    told = [s for s in samples if s is not None]
    assert told == [340.0]


@pytest.mark.parametrize(
    "cpu, throttled, in_flight, sent",
    [(0.3, False, 20, 340), (0.95, True, 20, 340), (0.95, False, 64, 340), (0.95, False, 20, 590)],
)
def test_no_rate_out_of_reach_when_the_service_or_the_input_is_the_limit(
    cpu: float, throttled: bool, in_flight: int, sent: int
) -> None:
    check = OutOfReach(600, 64, window=5)
    for t in range(0, 20):
        assert (
            check.observe(
                t, cpu * t, sent * t, throttled=throttled, in_flight=in_flight, ended=False
            )
            is None
        )


# -- end to end: a hostile inventory of 20,000 rows, both lanes, the same reports --------------


def _hostile_inventory(directory: Path) -> Path:
    """20,000 rows: generated ones with duplicates in other notations, invalid fields and
    cells a spreadsheet would run, and the hostile corpus's rows (quotes, line breaks in
    cells, mapped IPv6, bad UTF-8) in two clusters among them."""
    from bench import generate

    inventory = generate.rows(20_000 - 390, 40, dup_rate=0.05, invalid_rate=0.05, seed=7)
    raw = (Path(__file__).parent / "corpus" / "hostile.csv").read_bytes()
    corpus = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    import csv
    import io

    hostile = list(csv.DictReader(io.StringIO(corpus, newline="")))
    columns = [*generate.COLUMNS, "=evilcol", "note"]
    path = directory / "hostile20k.csv"
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for n, row in enumerate(inventory.rows):
            cells = {**row, "note": "=1+1" if n % 97 == 0 else f"n{n}"}
            writer.writerow([generate.csv_cell(cells.get(c)) for c in columns])
            # In clusters: the blocks around them are read by the reference, the others not.
            if n in (4000, 12000):
                for extra in hostile * 5:
                    writer.writerow([extra.get(c, "") for c in columns])
    return path


def _hostile_ndjson(directory: Path) -> Path:
    """20,000 NDJSON rows: generated ones with duplicates in other notations and invalid
    fields; user keys in varying number, order and type, some of them report columns;
    member groups; and the hostile corpus's lines in two clusters among them."""
    from bench import generate

    inventory = generate.rows(20_000 - 350, 40, dup_rate=0.05, invalid_rate=0.05, seed=7)
    hostile = (Path(__file__).parent / "corpus" / "hostile.ndjson").read_bytes()
    hostile = hostile.removeprefix(b"\xef\xbb\xbf")
    extras: list[dict[str, object]] = [
        {},
        {"note": "=1+1", "member_group_name": "g-1"},
        {"rack": 7, "note": "n"},
        {"note": "n", "rack": 2.5},
        {"line": 3},
        {"source": "x", "note": None, "rack": True},
        {"rack": None},
    ]
    path = directory / "hostile20k.ndjson"
    with path.open("wb") as handle:
        for n, row in enumerate(inventory.rows):
            given = {k: v for k, v in row.items() if v is not None}
            given.update(extras[n % len(extras)])
            handle.write(orjson.dumps(given) + b"\n")
            # In clusters: the blocks around them are read by the reference, the others not.
            if n in (4000, 12000):
                handle.write(hostile * 5)
    return path


def _sorted_reports(done: Finished) -> dict[str, list[str]]:
    """The report files' rows, sorted, with the cells the emulator draws blanked."""
    if (done.run_dir / "succeeded.ndjson").exists():
        return {
            name: sorted(
                orjson.dumps(
                    {
                        k: "X" if k in ("member_id", "member_group_id", "create_time") else v
                        for k, v in orjson.loads(line).items()
                    }
                ).decode()
                for line in (done.run_dir / name).read_bytes().splitlines()
            )
            for name in ("succeeded.ndjson", "errors.ndjson")
        }
    import csv

    found = {}
    for name in ("succeeded.csv", "errors.csv"):
        text = (done.run_dir / name).read_text(encoding="utf-8", errors="surrogateescape")
        rows = list(csv.reader(text.splitlines(keepends=True)))
        header = rows[0]
        drawn = [
            header.index(c) for c in ("member_id", "member_group_id", "create_time") if c in header
        ]
        lines = text.splitlines(keepends=True)
        if name == "succeeded.csv":
            # The emulator draws ids in the order requests arrive, which differs.
            for row in rows[1:]:
                for i in drawn:
                    row[i] = "X"
            lines = [lines[0], *(repr(row) for row in rows[1:])]
        found[name] = [lines[0], *sorted(lines[1:])]
    return found


# The channel of every row that names none.
CHANNEL_FLAGS = ("--project-id", "p", "--instance-id", "i", "--channel-id", "c")


async def _through_both_lanes(path: Path, tmp_path: Path) -> tuple[Finished, Finished]:
    """``run`` of ``path`` through the fast lane and the reference path: the same reports
    and tallies, or this fails."""
    args = ["run", str(path), "--emulator", "--rate", "5000", "--concurrency", "16", *CHANNEL_FLAGS]
    # Blocks of 64 KiB: tens of them, some with the corpus's rows.
    fast = await run_cli(args, tmp_path / "fast", env=cli_env(VPC_MEMBERS_LANE_BLOCK="65536"))
    reference = await run_cli(args, tmp_path / "ref", env=cli_env(VPC_MEMBERS_REFERENCE_LANE="1"))
    assert _sorted_reports(fast) == _sorted_reports(reference)
    assert fast.summary["rows"] == reference.summary["rows"]
    return fast, reference


@pytest.mark.parametrize("make", [_hostile_inventory, _hostile_ndjson])
async def test_a_hostile_inventory_gives_the_same_reports_through_both_lanes(
    tmp_path, make
) -> None:
    fast, reference = await _through_both_lanes(make(tmp_path), tmp_path)
    assert fast.code == reference.code == 4, fast.stderr
    assert fast.summary["rows"]["succeeded"] > 15_000


async def test_a_plan_of_a_hostile_inventory_with_a_helper_is_the_reference_plan(
    tmp_path,
) -> None:
    path = _hostile_ndjson(tmp_path)
    args = ["plan", str(path), *CHANNEL_FLAGS]
    # Spans of 64 KiB: tens of them, half of them the helper's.
    env = cli_env(VPC_MEMBERS_LANE_SPLIT="1", VPC_MEMBERS_LANE_SPAN="65536")
    split = await run_cli(args, tmp_path / "split", env=env)
    reference = await run_cli(args, tmp_path / "ref", env=cli_env(VPC_MEMBERS_REFERENCE_LANE="1"))
    assert split.code == reference.code, split.stderr
    for done in (split, reference):
        assert (done.run_dir / "errors.ndjson").stat().st_size > 0
    assert sorted((split.run_dir / "errors.ndjson").read_bytes().splitlines()) == sorted(
        (reference.run_dir / "errors.ndjson").read_bytes().splitlines()
    )
    for key in ("rows", "requests", "distinct_addresses", "rows_read"):
        assert split.summary[key] == reference.summary[key]


_USER_KEYS: list[Callable[[int], dict[str, object]]] = [
    # Several keys, a row with none.
    lambda n: [{"cmdb_id": "CI1"}, {}, {"line": 2, "note": "=x"}][n % 3],
    # One key, text in every row: its tail is joined as text.
    lambda n: {"cmdb_id": f"CI-{n} r/{n % 5}"},
    # One key, of every type, and a row without it.
    lambda n: [{"rack": n}, {}, {"rack": 2.5}, {"rack": True}, {"rack": None}, {"rack": "r"}][
        n % 6
    ],
]


@pytest.mark.parametrize("extra", _USER_KEYS)
async def test_landed_ndjson_rows_joined_from_pieces_are_the_reference_rows(
    tmp_path, extra
) -> None:
    # Every row valid and distinct, so that every post's rows land as joined pieces.
    path = tmp_path / "clean.ndjson"
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "vpc_channel_id": f"c{n % 3}",
                    "host": f"10.2.{n // 250}.{n % 250 + 1}",
                    "port": 8080,
                    "weight": n % 7,
                    "is_backup": n % 2 == 0,
                    "member_group_name": f"group-{n % 2}",
                    **extra(n),
                }
            )
            + b"\n"
            for n in range(3000)
        )
    )
    fast, reference = await _through_both_lanes(path, tmp_path)
    assert fast.code == reference.code == 0, fast.stderr


async def test_plans_of_hostile_inputs_are_the_same_through_both_lanes(tmp_path) -> None:
    corpus = Path(__file__).parent / "corpus"
    # And a gzip cut short after thousands of good rows: the input breaks mid-line.
    rows = (corpus / "hostile.ndjson").read_bytes() + b"".join(
        orjson.dumps({"host": f"10.1.{n // 250}.{n % 250 + 1}", "port": 80}) + b"\n"
        for n in range(5000)
    )
    cut = tmp_path / "cut.ndjson.gz"
    cut.write_bytes(gzip.compress(rows)[:-200])
    for path in (corpus / "hostile.csv", corpus / "hostile.ndjson", cut):
        args = ["plan", str(path), *CHANNEL_FLAGS]
        fast = await run_cli(args, tmp_path / f"fast-{path.name}")
        reference = await run_cli(
            args, tmp_path / f"ref-{path.name}", env=cli_env(VPC_MEMBERS_REFERENCE_LANE="1")
        )
        assert fast.code == reference.code
        report = "errors.csv" if path.suffix == ".csv" else "errors.ndjson"
        assert (fast.run_dir / report).read_bytes() == (reference.run_dir / report).read_bytes()
        assert fast.summary["rows"] == reference.summary["rows"]
        said = [line for line in fast.stderr.splitlines() if "vpc-members: error:" in line]
        assert said == [
            line for line in reference.stderr.splitlines() if "vpc-members: error:" in line
        ]
        assert bool(said) == (path == cut), said


def _as_reference(
    path: Path, block: int
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The rows of ``path`` (line, problem, fields) through the fast lane's front end, each
    fast row as the Record it stands for, beside the reference reader's."""

    def rows(items: Iterator[Block | Record]) -> list[tuple[object, ...]]:
        found: list[tuple[object, ...]] = []
        for item in items:
            records = (
                [item.record(i) for i in range(item.count)] if isinstance(item, Block) else [item]
            )
            found += [(r.line, r.problem, r.fields) for r in records]
        return found

    reference = rows(iter(Reader(Input(str(path), Format.CSV, False))))
    front = CsvBlocks(Reader(Input(str(path), Format.CSV, False)), Intake({}), block_bytes=block)
    fast = rows(iter(front))
    assert front.fallback_at is not None, "the record was longer than blocks can hold"
    return fast, reference


def test_a_record_longer_than_blocks_can_hold_leaves_the_rest_to_the_reference(tmp_path) -> None:
    from worker.inventory import MAX_ROW_BYTES

    head = "project_id,instance_id,vpc_channel_id,host,note\n"
    plain = "".join(f"p,i,c,10.0.0.{n + 1},n{n}\n" for n in range(50))
    monster = 'p,i,c,10.0.1.1,"' + ("x" * 1000 + "\n") * (3 * MAX_ROW_BYTES // 1000) + '"\n'
    path = tmp_path / "in.csv"
    path.write_text(head + plain + monster + plain)
    fast, reference = _as_reference(path, 4096)
    assert fast == reference
    assert any(problem for _, problem, _ in reference)


def test_a_simple_row_over_the_row_limit_is_the_references_to_refuse(tmp_path) -> None:
    from worker.inventory import MAX_CELL_BYTES, MAX_ROW_BYTES

    # No quote, each cell within the cell limit, the whole line over the row limit: a
    # simple block the fast lane reads in columns, and a record the reference refuses.
    wide = MAX_ROW_BYTES // MAX_CELL_BYTES + 2
    head = "project_id,instance_id,vpc_channel_id,host," + ",".join(f"x{n}" for n in range(wide))
    plain = "".join(f"p,i,c,10.0.0.{n + 1}," + "," * (wide - 1) + "\n" for n in range(50))
    monster = "p,i,c,10.0.1.1," + ",".join(["y" * (MAX_CELL_BYTES - 10)] * wide) + "\n"
    path = tmp_path / "in.csv"
    path.write_text(head + "\n" + plain + monster + plain)
    want = _plan(path, Format.CSV, tmp_path / "a", None, (100, 1 << 20))
    assert b"more than the row limit" in want[1]
    assert _plan(path, Format.CSV, tmp_path / "b", 4 * MAX_ROW_BYTES, (100, 1 << 20)) == want


@pytest.mark.parametrize(
    ("over", "ending", "last"),
    [(1, b"\r\n", False), (0, b"\r\n", False), (0, b"\n", True), (1, b"\n", True)],
)
def test_a_row_at_the_row_limit_is_judged_with_its_own_line_ending(
    tmp_path: Path, over: int, ending: bytes, last: bool
) -> None:
    """A row the lane leaves to the reference was read again with LF after it: a CRLF row
    one character over the limit passed, and a last line without a break, exactly at the
    limit, was refused."""
    from worker.inventory import MAX_ROW_BYTES

    head = b"host," + b",".join(b"c%d" % n for n in range(20))
    prefix = b"10.0.0.2,"
    size = MAX_ROW_BYTES + over - len(prefix) - 19 - (0 if last else len(ending))
    cells = [b"y" * (size // 20)] * 19 + [b"y" * (size - 19 * (size // 20))]
    row = prefix + b",".join(cells) + (b"" if last else ending)
    plain = [b"10.0.0.%d" % n + b"," * 20 + ending for n in (1, 3)]
    data = head + ending + plain[0] + (plain[1] + row if last else row + plain[1])
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    defaults = {"project_id": "dp", "instance_id": "di", "vpc_channel_id": "c1"}
    for block in (4096, 1 << 20):
        want = _run(path, defaults, tmp_path / f"a{block}", None, 0)
        assert _run(path, defaults, tmp_path / f"b{block}", block, 0) == want
        want = _plan(path, Format.CSV, tmp_path / f"c{block}", None, (100, 1 << 20))
        assert _plan(path, Format.CSV, tmp_path / f"d{block}", block, (100, 1 << 20)) == want
        assert (b"row is" in want[1]) == bool(over)


def test_rows_before_a_truncated_gzip_are_the_reference_rows(tmp_path) -> None:
    from worker.inventory import InputError

    plain = "host,port\n" + "".join(f"10.0.{n // 250}.{n % 250 + 1},80\n" for n in range(20_000))
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(plain.encode())[:-300])
    fronts = []
    for make in (
        lambda: Reader(Input(str(path), Format.CSV, True)),
        lambda: CsvBlocks(Reader(Input(str(path), Format.CSV, True)), Intake({}), block_bytes=8192),
    ):
        got: list[int] = []
        with pytest.raises(InputError) as broke:
            for item in make():
                got += (
                    [item.first_line + i for i in range(item.count)]
                    if isinstance(item, Block)
                    else [item.line]
                )
        fronts.append((got, broke.value.line, broke.value.reason))
    assert fronts[0] == fronts[1]


def test_a_taker_that_stops_early_leaves_no_thread_behind() -> None:
    def made() -> Iterator[int]:
        yield from range(1000)

    items = ahead(made(), depth=1)
    assert next(items) == 0
    items.close()  # type: ignore[attr-defined]
    assert not [thread for thread in threading.enumerate() if thread.name == "fast-lane"]


def test_an_error_in_the_thread_reaches_the_taker_after_the_items_before_it() -> None:
    def made() -> Iterator[int]:
        yield 1
        raise InputError("in.csv", "cannot be read", 7)

    taken: list[int] = []
    with pytest.raises(InputError, match="cannot be read"):
        taken.extend(ahead(made()))
    assert taken == [1]
    assert not [thread for thread in threading.enumerate() if thread.name == "fast-lane"]


# -- found by an independent probe of both lanes ----------------------------------------------

_HEAD = "project_id,instance_id,vpc_channel_id,host,member_group_name,note\n"


def _rows(count: int, group: str = "g") -> str:
    return "".join(
        f"p,i,c{n % 3},10.0.{n // 250}.{n % 250 + 1},{group},n{n}\n" for n in range(count)
    )


@pytest.mark.parametrize(
    ("name", "text", "batch"),
    [
        # pyarrow drops a byte-order mark that starts its buffer: here a data line's cell.
        ("bom", _HEAD + "\ufeffp,i,c0,10.9.0.1,g,x\n" + _rows(300), (100, 1 << 20)),
        # A body's size is its UTF-8 bytes, not its characters.
        ("utf8", _HEAD + _rows(300, "gröup-ä" * 8), (100, 1500)),
    ],
)
@pytest.mark.parametrize("block", [64, 4096, 1 << 20])
def test_csv_quirks_plan_as_the_reference_does(tmp_path, name, text, batch, block) -> None:
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    want = _plan(path, Format.CSV, tmp_path / "a", None, batch)
    assert _plan(path, Format.CSV, tmp_path / "b", block, batch) == want


def test_rows_before_a_line_longer_than_blocks_can_hold_are_planned(tmp_path) -> None:
    from worker.inventory import MAX_ROW_BYTES

    # The blocks before it were being decided by the plan's threads when the long line
    # sent the rest of the file to the reference reader: they were dropped unseen.
    monster = "p,i,c0,10.9.0.1,g," + "x" * (2 * MAX_ROW_BYTES + 3 * 4096) + "\n"
    path = tmp_path / "in.csv"
    path.write_text(_HEAD + _rows(2000) + monster + _rows(50))
    want = _plan(path, Format.CSV, tmp_path / "a", None, (100, 1 << 20))
    got = _plan(path, Format.CSV, tmp_path / "b", 4096, (100, 1 << 20))
    assert got == want
    assert sum(members + duplicates for members, duplicates, *_ in got[0].values()) == 2050


@pytest.mark.parametrize("cut", [300, 2000, 9000])
def test_ndjson_rows_read_whole_before_a_truncated_gzip_are_planned(tmp_path, cut) -> None:
    rows = b"".join(
        orjson.dumps({"vpc_channel_id": f"c{n % 3}", "host": f"10.0.{n // 250}.{n % 250 + 1}"})
        + b"\n"
        for n in range(20_000)
    )
    path = tmp_path / "in.ndjson.gz"
    path.write_bytes(gzip.compress(rows)[:-cut])
    plans = []
    for fast, where in ((None, "a"), (1 << 20, "b"), (8192, "c")):
        directory = tmp_path / where
        directory.mkdir()
        reader = Reader(Input(str(path), Format.NDJSON, True))
        intake = Intake({"project_id": "dp", "instance_id": "di"})
        if fast is None:
            stream: Stream = Stream([reader])
            items: Iterator[Record | Block] = iter(stream)
        else:
            stream = FastStream(
                [reader], lambda r, b=fast, i=intake: NdjsonBlocks(r, i, block_bytes=b)
            )
            items = stream.items()
        ledger = Ledger(ReportWriter(directory, Format.NDJSON, []))
        plan = make_plan(items, intake, Batcher(100, 1 << 20), ledger)
        ledger.close()
        assert stream.error is not None
        plans.append(({str(k): v.members for k, v in plan.channels.items()}, stream.error.line))
    assert plans[0] == plans[1] == plans[2]
    assert sum(plans[0][0].values()) > 0


def test_a_users_integer_past_64_bits_lands_as_the_reference_reads_it(tmp_path) -> None:
    rows = [
        orjson.dumps({"vpc_channel_id": "c1", "host": f"10.0.0.{n}", "n": n}) for n in range(1, 9)
    ]
    rows[3] = b'{"vpc_channel_id":"c1","host":"10.0.1.1","n":123456789012345678901234567890}'
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(rows) + b"\n")
    defaults = {"project_id": "dp", "instance_id": "di"}
    want = _run(path, defaults, tmp_path / "a", None, 0, Format.NDJSON)
    assert _run(path, defaults, tmp_path / "b", 1 << 20, 0, Format.NDJSON) == want


def test_user_columns_reported_under_one_name_are_refused(tmp_path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("host,source,user.source\n10.0.0.1,a,b\n")
    with pytest.raises(InputError, match=r"'source' and 'user\.source' would both be reported"):
        Reader(Input(str(path), Format.CSV, False))
    line = b'{"host":"10.0.0.1","source":"a","user.source":"b","n":1}'
    record = inventory.ndjson_record("in.ndjson", 1, line)
    assert record is not None and record.problem is not None
    assert "would both be reported as 'user.source'" in record.problem
    assert record.fields == {"host": "10.0.0.1", "n": 1}
    path = tmp_path / "in.ndjson"
    path.write_bytes(b'{"host":"10.0.0.2","n":2}\n' + line + b"\n")
    want = _plan(path, Format.NDJSON, tmp_path / "a", None, (100, 1 << 20))
    assert _plan(path, Format.NDJSON, tmp_path / "b", 1 << 20, (100, 1 << 20)) == want


def test_a_file_name_that_is_not_utf8_is_refused_by_name() -> None:
    with pytest.raises(InputError, match=r"bad\\xff.csv: the file name is not valid UTF-8"):
        inventory.detect(b"bad\xff.csv".decode("utf-8", "surrogateescape"))
