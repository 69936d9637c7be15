"""End to end: the real CLI in a subprocess, the emulator in-process, HTTP over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections import Counter
from pathlib import Path

import orjson
import pytest
import structlog

from bench import generate
from tests.clirun import TOKEN, cli_env, get_json, inventory_file, run_cli, start_cli
from worker.config import Config
from worker.emulator import ChannelSpec, Emulator, EmulatorConfig
from worker.runner import Run, plan, run

FAST = ("--rate", "2000", "--concurrency", "16")


def _canonical(host: object) -> str:
    return str(ipaddress.ip_address(str(host)))


def _landed_state(state: dict[str, object]) -> dict[tuple[str, str, str, str], dict[str, object]]:
    members = {}
    for channel in state["channels"]:  # type: ignore[attr-defined]
        key = (channel["project_id"], channel["instance_id"], channel["vpc_channel_id"])
        for member in channel["members"]:
            members[(*key, member["host"])] = member
    return members


async def test_twenty_thousand_rows_land_exactly_the_first_wins_set(tmp_path: Path) -> None:
    inventory = generate.rows(20_000, 300, dup_rate=0.05, invalid_rate=0.01, seed=7)
    # Two files, read as one stream: duplicates of rows in the first file turn up in the second.
    half = len(inventory.rows) // 2
    first, second = tmp_path / "a.csv", tmp_path / "b.ndjson"
    generate.write_csv(first, inventory.rows[:half])
    generate.write_ndjson(second, inventory.rows[half:])

    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        done = await run_cli(
            ["run", str(first), str(second), "--endpoint", emulator.url, *FAST],
            tmp_path / "reports",
        )
        state = await get_json(emulator.url + "/_emulator/state")

    assert done.code == 4, done.stderr  # the 1% invalid rows
    expected = Counter(inventory.expected)
    rows = done.summary["rows"]
    assert rows == {
        "total": 20_000,
        "succeeded": expected["valid"],
        "duplicate": expected["duplicate"],
        "invalid": expected["invalid"],
        "rejected": 0,
        "failed": 0,
        "aborted": 0,
        "pending": 0,
    }
    landed = _landed_state(state)
    wanted = {
        (r["project_id"], r["instance_id"], r["vpc_channel_id"], _canonical(r["host"])): r
        for r, kind in zip(inventory.rows, inventory.expected, strict=True)
        if kind == "valid"
    }
    assert landed.keys() == wanted.keys()
    for key, row in wanted.items():
        member = landed[key]
        for name in ("port", "weight", "is_backup", "member_group_name", "status"):
            assert member[name] == row[name], (key, name)

    succeeded = done.report("succeeded.csv")
    errors = done.report("errors.csv")
    seen = Counter((r["source"], r["line"]) for r in succeeded + errors)
    assert len(seen) == 20_000 and set(seen.values()) == {1}
    ids = {
        landed[(r["project_id"], r["instance_id"], r["vpc_channel_id"], r["host"])]["id"]
        for r in succeeded
    }
    assert ids == {r["member_id"] for r in succeeded}
    assert Counter(r["outcome"] for r in errors) == {
        "duplicate": expected["duplicate"],
        "invalid": expected["invalid"],
    }
    assert all(r["duplicate_of"] for r in errors if r["outcome"] == "duplicate")


async def test_refused_token_stops_the_run_and_aborts_the_rest(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 500, 5, seed=3)
    async with Emulator(EmulatorConfig(tokens=("another-token",), auto_create=True)) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, *FAST, "--batch-size", "10"],
            tmp_path / "reports",
        )
        stats = await get_json(emulator.url + "/_emulator/stats")

    assert done.code == 3, done.stderr
    assert "credentials were refused" in done.stderr
    assert done.summary["rows"]["aborted"] == 500  # type: ignore[index]
    errors = done.report("errors.csv")
    assert len(errors) == 500 and {r["outcome"] for r in errors} == {"aborted"}
    # Nothing more is sent once the token is refused: only requests already in flight.
    assert done.summary["requests"]["sent"] <= 16  # type: ignore[index]
    assert TOKEN not in str(stats)


async def test_unknown_channel_fails_its_rows_without_further_requests(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 400, 4, seed=5)
    ids = generate.channel_ids(4)
    known = tuple(ChannelSpec(generate.PROJECT, i, c) for i, c in ids[:3])
    config = EmulatorConfig(tokens=(TOKEN,), channels=known)
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, *FAST, "--batch-size", "5"],
            tmp_path / "reports",
        )
        stats = await get_json(emulator.url + "/_emulator/stats")

    assert done.code == 1, done.stderr
    rows = done.summary["rows"]
    assert rows["succeeded"] == 300 and rows["failed"] == 100  # type: ignore[index]
    failed = [r for r in done.report("errors.csv") if r["outcome"] == "failed"]
    assert {r["vpc_channel_id"] for r in failed} == {ids[3][1]}
    assert {r["error_code"] for r in failed} <= {"APIG.3030", "APIG.3023"}
    # 20 batches of 5 for that channel, but one request learned it is gone.
    assert done.summary["requests"]["by_status"]["404"] == 1  # type: ignore[index]
    assert "404" in str(stats)


@pytest.mark.parametrize(
    ("settings", "answer"),
    [
        ({"rate": 5.0, "burst": 2.0}, "429"),
        ({"fail_rate": 0.3, "seed": 11}, "500"),
    ],
    ids=["throttled-429", "server-errors-500"],
)
async def test_retries_land_everything(
    tmp_path: Path, settings: dict[str, float], answer: str
) -> None:
    _inventory, source = inventory_file(tmp_path, 300, 3, seed=9)
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True, **settings)  # type: ignore[arg-type]
    async with Emulator(config) as emulator:
        done = await run_cli(
            [
                "run",
                str(source),
                "--endpoint",
                emulator.url,
                "--rate",
                "50",
                "--batch-size",
                "20",
                "--max-attempts",
                "10",
            ],
            tmp_path / "reports",
            cli_env(),
        )
    assert done.code == 0, done.stderr
    summary = done.summary
    assert summary["rows"]["succeeded"] == 300  # type: ignore[index]
    assert summary["requests"]["by_status"].get(answer, 0) > 0  # type: ignore[union-attr, index]
    assert summary["requests"]["retried"] > 0  # type: ignore[index]
    if answer == "429":  # the pacer fell below the configured rate
        over_time = summary["rate"]["effective_over_time"]  # type: ignore[index]
        assert min(point["rate"] for point in over_time) < 50


async def test_errors_report_is_itself_an_input(tmp_path: Path) -> None:
    inventory, source = inventory_file(tmp_path, 400, 4, dup_rate=0.05, invalid_rate=0.05, seed=15)
    first = await run_cli(["run", str(source), "--emulator", "--rate", "500"], tmp_path / "a")
    errors = first.run_dir / "errors.csv"
    # Fed back as it is: the report's own columns are not carried again, and the rows
    # that lost a dedupe stay duplicates (their winners landed): nothing is sent.
    again = await run_cli(["run", str(errors), "--emulator", "--rate", "500"], tmp_path / "b")
    assert again.code == 4, again.stderr
    rows = again.summary["rows"]
    assert rows["total"] == len(first.report("errors.csv"))  # type: ignore[index]
    assert rows["invalid"] == inventory.expected.count("invalid")  # type: ignore[index]
    assert rows["duplicate"] == inventory.expected.count("duplicate")  # type: ignore[index]
    assert again.summary["requests"]["sent"] == 0  # type: ignore[index]
    header = (again.run_dir / "errors.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))


async def test_a_resume_knows_landed_ecs_rows_that_gave_a_host_too(tmp_path: Path) -> None:
    # Such a row is keyed by its ecs_id; read back from the report by its host, it was
    # not known for landed, and a resume sent it again and reported it twice.
    source = tmp_path / "in.csv"
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,ecs_id,ecs_name\n"
        "p1,i1,c1,10.0.0.5,ecs-1,vm1\n"
        "p1,i1,c1,10.0.0.6,,\n"
    )
    done = await run_cli(["run", str(source), "--emulator"], tmp_path / "r")
    assert done.code == 0, done.stderr
    again = await run_cli(
        ["run", str(source), "--emulator", "--resume", str(done.run_dir)], tmp_path / "r"
    )
    assert again.code == 0, again.stderr
    assert again.summary["already_landed"] == 2
    assert len(again.report("succeeded.csv")) == 2
    # Resumed from another --reports-dir: latest is where the run is, and names it.
    elsewhere = await run_cli(
        ["run", str(source), "--emulator", "--resume", str(done.run_dir)], tmp_path / "other"
    )
    assert elsewhere.code == 0, elsewhere.stderr
    assert (tmp_path / "r" / "latest").resolve() == done.run_dir.resolve()
    assert not (tmp_path / "other" / "latest").is_symlink()


async def test_a_caller_interrupts_a_run_as_sigint_does(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 50, 2, seed=12)
    config = Config(inputs=(str(source),), emulator=True, reports_dir=tmp_path / "r")
    before = structlog.contextvars.get_contextvars()
    ran = Run(config, "run")
    ran.interrupt()  # the reason a signal would give: interrupted
    summary = await ran.execute()
    assert summary.exit_code == 130
    assert summary.rows["aborted"] == summary.rows["total"] == 50
    # The run's id was bound for the run only: the caller's context is as it was.
    assert structlog.contextvars.get_contextvars() == before
    plan(config)
    assert structlog.contextvars.get_contextvars() == before
    # A Run is one run; a token is given as a credentials object, not a string.
    with pytest.raises(RuntimeError, match="make a new Run"):
        await ran.execute()
    with pytest.raises(TypeError, match="Token"):
        Run(config, "run", credentials="a-token")  # type: ignore[arg-type]


async def test_a_cancelled_run_drains_reports_every_row_then_is_cancelled(tmp_path: Path) -> None:
    """Cancelled, a run stopped at once: rows in flight or waiting had no report row
    (79-89 of 310 had one, in a probe) until --resume."""
    _inventory, source = inventory_file(tmp_path, 300, 3, seed=14)
    reports = tmp_path / "r"
    config = Config(
        inputs=(str(source),), emulator=True, rate=20, batch_size=10, reports_dir=reports
    )
    task = asyncio.create_task(run(config))
    async with asyncio.timeout(60):  # a hang guard
        while not any(p.stat().st_size > 200 for p in reports.glob("2*/succeeded.csv")):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    summary = orjson.loads((reports / "latest" / "summary.json").read_bytes())
    assert summary["exit_code"] == 130
    assert summary["rows"]["total"] == 300 and summary["rows"]["aborted"] > 0


async def test_a_pipe_or_a_device_named_as_an_input_is_refused_by_name(tmp_path: Path) -> None:
    """A named input is read twice (hashed for --resume, then read): a run of a pipe lost
    to the hash the 913 rows of 1,000 it read first, and exited 4; through the fast lane,
    whose reader rewinds, it crashed."""
    _inventory, source = inventory_file(tmp_path, 1000, 2, seed=17)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    writer = await asyncio.create_subprocess_exec("sh", "-c", f"cat '{source}' > '{fifo}'")
    try:
        done = await run_cli(["run", str(fifo), "--emulator"], tmp_path / "r")
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already, at a broken pipe
            writer.kill()
        await writer.wait()
    assert done.code == 2 and f"{fifo}: is not a regular file" in done.stderr, done.stderr
    assert "give it on stdin as -" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "r").glob("2*"))  # refused before the run began
    done = await run_cli(["plan", "/dev/null", "--format", "csv"], tmp_path / "r")
    assert done.code == 2 and "/dev/null: is not a regular file" in done.stderr, done.stderr


async def test_stdin_needs_a_format_and_then_reads_like_a_file(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 100, 2, seed=16, suffix=".ndjson")
    process = await start_cli(
        ["run", "-", "--format", "ndjson", "--emulator", "--rate", "500"], tmp_path / "reports"
    )
    _, stderr = await process.communicate(source.read_bytes())
    assert process.returncode == 0, stderr.decode()
