"""Report files: safe cells, private files, and a resume that trusts only whole rows."""

from __future__ import annotations

import csv
import stat
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.inprocess import full_disk_for
from worker.config import Format
from worker.members import Channel, Member
from worker.outcomes import Outcome, Result
from worker.reports import (
    EXTRA_JSON_COLUMN,
    ReportsUnwritable,
    ReportWriter,
    RowInfo,
    extra_columns,
    landed_key,
    landed_rows,
    neutralise,
    report_values,
    unneutralise,
    write_json_atomic,
)

CHANNEL = Channel("p", "i", "c")
LANDED = Result(
    Outcome.SUCCEEDED, attempts=1, member_id="m" * 32, create_time="2020-07-23T09:13:24Z"
)
REFUSED = Result(Outcome.REJECTED, error_code="APIG.2004", error_msg="weight", http_status=400)


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "''-x"])
def test_formula_cells_get_a_quote(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["", "x=1", "'", "'x", "10.0.0.1", " =x"])
def test_plain_cells_stay(cell: str) -> None:
    assert neutralise(cell) == cell


@given(st.text(st.sampled_from("'=+-@\t\rax"), max_size=6) | st.text())
def test_unneutralise_undoes_neutralise(cell: str) -> None:
    assert unneutralise(neutralise(cell)) == cell
    # A spreadsheet runs a cell as a formula only from its first character.
    assert not neutralise(cell).startswith(("=", "+", "-", "@", "\t", "\r"))


def _row(line: int, fields: dict[str, object], member: Member | None = None) -> RowInfo:
    return RowInfo("in.csv", line, fields, CHANNEL if member else None, member)


def _keys(*rows: tuple[int, str], source: str = "in.csv") -> set[int]:
    return {landed_key(source, line, CHANNEL, host) for line, host in rows}


def _run_dir(parent: Path) -> Path:
    directory = parent / "run"
    directory.mkdir(mode=0o700)
    return directory


def test_report_values_put_location_outcome_channel_member_then_extras() -> None:
    fields = {"vpc_channel_id": "c", "host": "H.example", "owner": "ops", "line": "99"}
    values = report_values(_row(3, fields, Member(host="h.example")), REFUSED)
    assert list(values)[:10] == [
        "source",
        "line",
        "outcome",
        "error_code",
        "error_msg",
        "http_status",
        "attempts",
        "duplicate_of",
        "request_id",
        "project_id",
    ]
    assert (values["line"], values["host"], values["owner"]) == (3, "h.example", "ops")
    # A row read from an invalid line keeps the user's raw values.
    raw = report_values(_row(4, {"host": " x y ", "weight": "heavy"}), REFUSED)
    assert (raw["host"], raw["weight"], raw["project_id"]) == (" x y ", "heavy", None)


def _written(tmp_path: Path, fmt: Format) -> Path:
    reports = ReportWriter(_run_dir(tmp_path), fmt, ["owner", EXTRA_JSON_COLUMN])
    reports.write(_row(2, {"owner": "=cmd()", "note": [1]}, Member(host="10.0.0.1")), LANDED)
    reports.write(_row(3, {"host": "bad"}), REFUSED)
    reports.write(_row(4, {}, Member(host="10.0.0.2")), LANDED)
    reports.close()
    return tmp_path / "run"


@pytest.mark.parametrize("fmt", list(Format))
def test_files_are_private_and_rows_land_where_they_belong(tmp_path: Path, fmt: Format) -> None:
    directory = _written(tmp_path, fmt)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("succeeded", "errors"):
        assert stat.S_IMODE((directory / f"{name}.{fmt.value}").stat().st_mode) == 0o600
    assert landed_rows(directory, fmt) == _keys((2, "10.0.0.1"), (4, "10.0.0.2"))


def test_csv_report_neutralises_and_collects_leftovers_as_json(tmp_path: Path) -> None:
    with (_written(tmp_path, Format.CSV) / "succeeded.csv").open(newline="") as handle:
        first = next(csv.DictReader(handle))
    assert first["owner"] == "'=cmd()"
    assert orjson.loads(first[EXTRA_JSON_COLUMN]) == {"note": [1]}


CELL_TEXT = st.text(st.sampled_from(",\"\n\r\t '=+-@ax\u00e9"), max_size=8) | st.text(max_size=8)


@example([("", "\r")])  # csv alone leaves a lone carriage return unquoted
@given(st.lists(st.tuples(CELL_TEXT, CELL_TEXT), min_size=1, max_size=4))
def test_csv_rows_read_back_as_written_whatever_their_cells(rows: list[tuple[str, str]]) -> None:
    # Landed rows are joined by hand when no cell needs quoting, and written by csv
    # otherwise: either way a CSV reader must get every cell back, neutralised, and each
    # row whole.
    with tempfile.TemporaryDirectory() as scratch:
        directory = _run_dir(Path(scratch))
        writer = ReportWriter(directory, Format.CSV, ["note", "owner"])
        for line, (note, owner) in enumerate(rows, start=2):
            fields = {"note": note, "owner": owner}
            writer.write(RowInfo("in.csv", line, fields, CHANNEL, Member(host="10.0.0.1")), LANDED)
        writer.close()
        with (directory / "succeeded.csv").open(newline="", encoding="utf-8") as handle:
            back = list(csv.DictReader(handle))
    assert [(r["note"], r["owner"]) for r in back] == [
        (neutralise(note), neutralise(owner)) for note, owner in rows
    ]
    assert [r["line"] for r in back] == [str(n) for n in range(2, len(rows) + 2)]


def test_a_column_name_with_a_carriage_return_stays_one_column(tmp_path: Path) -> None:
    writer = ReportWriter(_run_dir(tmp_path), Format.CSV, ["note\rnext"])
    writer.write(RowInfo("in.csv", 2, {"note\rnext": "x"}, CHANNEL, Member(host="h")), LANDED)
    writer.close()
    with (tmp_path / "run" / "succeeded.csv").open(newline="", encoding="utf-8") as handle:
        back = list(csv.DictReader(handle))
    assert [row["note\rnext"] for row in back] == ["x"]


@pytest.mark.parametrize("fmt", list(Format))
def test_a_torn_last_line_is_cut_and_not_landed(tmp_path: Path, fmt: Format) -> None:
    directory = _written(tmp_path, fmt)
    path = directory / f"succeeded.{fmt.value}"
    whole = path.read_bytes()
    torn = b"in.csv,5,p,i" if fmt is Format.CSV else b'{"source":"in.csv","line":5'
    path.write_bytes(whole + torn)
    assert landed_rows(directory, fmt) == _keys((2, "10.0.0.1"), (4, "10.0.0.2"))
    assert path.read_bytes() == whole


def test_a_torn_header_leaves_an_empty_file(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "succeeded.csv").write_bytes(b"source,li")
    assert landed_rows(directory, Format.CSV) == set()
    assert (directory / "succeeded.csv").read_bytes() == b""


def test_a_neutralised_source_name_is_read_back_as_written(tmp_path: Path) -> None:
    reports = ReportWriter(tmp_path, Format.CSV, [])
    reports.write(RowInfo("-inventory.csv", 2, {}, CHANNEL, Member(host="10.0.0.1")), LANDED)
    reports.close()
    assert landed_rows(tmp_path, Format.CSV) == _keys((2, "10.0.0.1"), source="-inventory.csv")


def test_resume_appends_to_succeeded_and_starts_errors_afresh(tmp_path: Path) -> None:
    directory = _written(tmp_path, Format.CSV)
    reports = ReportWriter(directory, Format.CSV, ["owner", EXTRA_JSON_COLUMN], resume=True)
    reports.write(_row(9, {}, Member(host="10.0.0.9")), LANDED)
    reports.close()
    text = (directory / "succeeded.csv").read_text()
    assert text.count("source,line") == 1
    assert landed_rows(directory, Format.CSV) == _keys(
        (2, "10.0.0.1"), (4, "10.0.0.2"), (9, "10.0.0.9")
    )
    assert (directory / "errors.csv").read_text().count("\n") == 1


def test_no_landed_rows_without_a_file(tmp_path: Path) -> None:
    assert landed_rows(tmp_path, Format.NDJSON) == set()


def test_write_json_atomic_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"total": 1})
    write_json_atomic(path, {"total": 2})
    assert orjson.loads(path.read_bytes()) == {"total": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_extra_columns_keep_first_seen_order_and_skip_known_ones() -> None:
    headers = [("host", "owner", "line", "cmdb"), ("cmdb", "team", "error_msg")]
    assert extra_columns(headers, any_ndjson=False) == ["owner", "cmdb", "team"]
    assert extra_columns([], any_ndjson=True) == [EXTRA_JSON_COLUMN]


def test_a_resumed_csv_keeps_the_header_it_was_begun_with(tmp_path: Path) -> None:
    first = ReportWriter(tmp_path, Format.CSV, ["owner"])
    first.close()
    # The inventory gained a column between the crash and the resume.
    again = ReportWriter(tmp_path, Format.CSV, ["owner", "rack"], resume=True)
    again.write(_row(2, {"owner": "ops", "rack": "r1"}, Member(host="10.0.0.1")), LANDED)
    again.close()
    rows = list(csv.DictReader((tmp_path / "succeeded.csv").open(newline="")))
    assert rows[0]["owner"] == "ops" and "rack" not in rows[0]


@pytest.mark.parametrize("fmt", [Format.CSV, Format.NDJSON])
def test_a_resumed_sync_keeps_the_removals_of_its_extras_and_no_torn_row(
    tmp_path: Path, fmt: Format
) -> None:
    from worker.outcomes import Fate

    first = ReportWriter(tmp_path, fmt, [], extras=True)
    fates = [Fate.REMOVED, Fate.KEPT, Fate.REMOVED, Fate.FAILED, Fate.REMOVED]
    for n, fate in enumerate(fates):
        live = {"id": f"m{n}", "host": f"10.0.0.{n + 1}", "port": 80}
        first.write_extra(CHANNEL, live, fate, Result(Outcome.SUCCEEDED, attempts=1))
    first.close()
    path = tmp_path / f"extras.{fmt.value}"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rstrip(b"\n").rfind(b"\n") + 12])  # the last row torn
    again = ReportWriter(tmp_path, fmt, [], resume=True, extras=True)
    again.close()
    assert again.removed_before == 2
    kept = path.read_bytes()
    # The unsure ones (sent, not known to have applied) stay, for the planner to settle.
    assert kept.count(b"removed") == 2 and kept.count(b"kept") == kept.count(b"failed") == 1
    assert set(kept.splitlines()) <= set(whole.splitlines())  # whole rows, as written
    assert [row["fate"] for row in again.unsure_before] == ["kept", "failed"]


@pytest.mark.parametrize("fmt", [Format.CSV, Format.NDJSON])
def test_a_resumed_sync_keeps_rows_whose_cells_hold_line_separators(
    tmp_path: Path, fmt: Format
) -> None:
    # Not line breaks to a CSV or JSON reader: str.splitlines would cut such rows in two.
    from worker.outcomes import Fate

    first = ReportWriter(tmp_path, fmt, [], extras=True)
    for n, (name, fate) in enumerate([("a\u2028b", Fate.REMOVED), ("x\x85y", Fate.FAILED)]):
        live = {"id": f"m{n}", "host": f"10.0.0.{n + 1}", "ecs_name": name}
        first.write_extra(CHANNEL, live, fate, Result(Outcome.SUCCEEDED, attempts=1))
    first.close()
    again = ReportWriter(tmp_path, fmt, [], resume=True, extras=True)
    again.close()
    assert again.removed_before == 1
    assert [row["ecs_name"] for row in again.unsure_before] == ["x\x85y"]


@pytest.mark.parametrize("fmt", [Format.CSV, Format.NDJSON])
def test_unsure_removals_outlive_a_resume_killed_before_it_settles_them(
    tmp_path: Path, fmt: Format
) -> None:
    from worker.outcomes import Fate

    def live(n: int) -> dict[str, object]:
        return {"id": f"m{n}", "host": f"10.0.0.{n + 1}"}

    first = ReportWriter(tmp_path, fmt, [], extras=True)
    for n, fate in enumerate([Fate.FAILED, Fate.KEPT]):  # both sent once, then the stop
        first.write_extra(CHANNEL, live(n), fate, Result(Outcome.ABORTED, attempts=1))
    first.close()
    # A resume settles m0 (its removal had applied), and is killed -9: never closed.
    killed = ReportWriter(tmp_path, fmt, [], resume=True, extras=True)
    assert [row["member_id"] for row in killed.unsure_before] == ["m0", "m1"]
    done = Result(Outcome.SUCCEEDED, error_code="applied_before", attempts=1)
    killed.write_extra(CHANNEL, live(0), Fate.REMOVED, done)
    killed.flush()
    again = ReportWriter(tmp_path, fmt, [], resume=True, extras=True)
    assert again.removed_before == 1
    assert [row["member_id"] for row in again.unsure_before] == ["m1"]
    again.close()
    text = (tmp_path / f"extras.{fmt.value}").read_text()
    assert text.count("m0") == 1 and text.count("m1") == 1 and "applied_before" in text


def test_extras_are_compacted_when_another_report_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.outcomes import Fate

    writer = ReportWriter(tmp_path, Format.CSV, [], extras=True)
    live = {"id": "m0", "host": "10.0.0.1"}
    writer.write_extra(CHANNEL, live, Fate.KEPT, Result(Outcome.ABORTED, attempts=1), ahead=True)
    writer.write_extra(CHANNEL, live, Fate.REMOVED, Result(Outcome.SUCCEEDED, attempts=1))
    writer.write(_row(2, {}, Member(host="10.0.0.9")), LANDED)
    full_disk_for(monkeypatch, "succeeded.csv")
    with pytest.raises(ReportsUnwritable):
        writer.close()
    rows = list(csv.DictReader((tmp_path / "extras.csv").open(newline="")))
    assert [(r["member_id"], r["fate"]) for r in rows] == [("m0", "removed")]
