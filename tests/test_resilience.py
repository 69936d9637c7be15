"""Breaking things on purpose: faults, kill -9 and resume, signals, splitting, the lock, secrets."""

from __future__ import annotations

import ipaddress
import os
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench import generate
from tests.clirun import (
    TOKEN,
    Finished,
    cli_env,
    get_json,
    inventory_file,
    run_cli,
    start_cli,
    wait_for_landed_rows,
)
from worker.emulator import ChannelSpec, Emulator, EmulatorConfig
from worker.lock import RunLock


def _first_wins(inventory: generate.Inventory) -> set[tuple[str, str, str, str]]:
    return {
        (
            str(r["project_id"]),
            str(r["instance_id"]),
            str(r["vpc_channel_id"]),
            str(ipaddress.ip_address(str(r["host"]))),
        )
        for r, kind in zip(inventory.rows, inventory.expected, strict=True)
        if kind == "valid"
    }


def _emulator_members(state: dict[str, object]) -> list[tuple[str, str, str, str]]:
    return [
        (c["project_id"], c["instance_id"], c["vpc_channel_id"], m["host"])
        for c in state["channels"]  # type: ignore[attr-defined]
        for m in c["members"]
    ]


def _assert_accounted(done: Finished, inventory: generate.Inventory) -> None:
    rows = done.report("succeeded.csv") + done.report("errors.csv")
    where = Counter((r["source"], r["line"]) for r in rows)
    assert len(where) == len(inventory.rows) and set(where.values()) == {1}
    summary_rows = done.summary["rows"]
    assert summary_rows["total"] == len(inventory.rows)  # type: ignore[index]


async def test_flaky_throttled_service_still_lands_every_member_once(tmp_path: Path) -> None:
    inventory, source = inventory_file(
        tmp_path, 3000, 40, dup_rate=0.03, invalid_rate=0.01, seed=21
    )
    config = EmulatorConfig(
        tokens=(TOKEN,),
        auto_create=True,
        seed=4,
        rate=50.0,
        fail_rate=0.05,
        fail_after_commit_rate=0.02,
        reset_rate=0.02,
        slow_rate=0.01,
        slow_ms=1500,
    )
    async with Emulator(config) as emulator:
        done = await run_cli(
            [
                "run",
                str(source),
                "--endpoint",
                emulator.url,
                "--rate",
                "80",
                "--concurrency",
                "8",
                "--batch-size",
                "25",
                "--timeout",
                "1",
                "--max-attempts",
                "12",
            ],
            tmp_path / "reports",
        )
        state = await get_json(emulator.url + "/_emulator/state")
        stats = await get_json(emulator.url + "/_emulator/stats")

    assert done.code == 4, done.stderr  # only the invalid rows
    members = _emulator_members(state)
    assert len(members) == len(set(members))
    assert set(members) == _first_wins(inventory)
    assert stats["members_created"] == len(members)
    faults = stats["faults"]
    assert all(faults.get(kind, 0) > 0 for kind in ("fail", "fail_after_commit", "reset"))  # type: ignore[union-attr]
    assert stats["throttled"] > 0
    rows = done.summary["rows"]
    assert rows["succeeded"] == len(members) and rows["failed"] == 0  # type: ignore[index]
    _assert_accounted(done, inventory)
    landed_ids = [r["member_id"] for r in done.report("succeeded.csv")]
    assert len(landed_ids) == len(set(landed_ids)) == len(members)


async def test_kill_nine_then_resume_is_as_if_nothing_happened(tmp_path: Path) -> None:
    inventory, source = inventory_file(
        tmp_path, 3000, 30, dup_rate=0.05, invalid_rate=0.01, seed=33
    )
    reports = tmp_path / "reports"
    args = ["--rate", "40", "--batch-size", "10", "--concurrency", "4"]
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        process = await start_cli(["run", str(source), "--endpoint", emulator.url, *args], reports)
        run_dir = await wait_for_landed_rows(reports, at_least=200)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        succeeded = (run_dir / "succeeded.csv").read_bytes()
        assert succeeded.endswith(b"\n")  # whole rows only, even under SIGKILL
        assert not (run_dir / "summary.json").exists()

        done = await run_cli(
            [
                "run",
                str(source),
                "--endpoint",
                emulator.url,
                *args,
                "--rate",
                "400",
                "--resume",
                str(run_dir),
            ],
            reports,
        )
        state = await get_json(emulator.url + "/_emulator/state")
        stats = await get_json(emulator.url + "/_emulator/stats")

    assert done.code == 4, done.stderr
    assert done.run_dir == run_dir
    members = _emulator_members(state)
    assert len(members) == len(set(members)) and set(members) == _first_wins(inventory)
    assert stats["members_created"] == len(members)
    _assert_accounted(done, inventory)
    expected = Counter(inventory.expected)
    assert done.summary["rows"] == {  # type: ignore[comparison-overlap]
        "total": len(inventory.rows),
        "succeeded": expected["valid"],
        "duplicate": expected["duplicate"],
        "invalid": expected["invalid"],
        "rejected": 0,
        "failed": 0,
        "aborted": 0,
        "pending": 0,
    }


@pytest.mark.parametrize(
    ("signum", "code", "reason"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
async def test_a_signal_drains_reports_the_rest_aborted_and_exits_128_plus_it(
    tmp_path: Path, signum: signal.Signals, code: int, reason: str
) -> None:
    inventory, source = inventory_file(tmp_path, 2000, 20, seed=8)
    reports = tmp_path / "reports"
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True, latency_ms=50)
    async with Emulator(config) as emulator:
        process = await start_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "20", "--batch-size", "10"],
            reports,
        )
        await wait_for_landed_rows(reports, at_least=50)
        process.send_signal(signum)
        stdout, stderr = await process.communicate()
    done = Finished(process.returncode or 0, stdout.decode(), stderr.decode(), reports)
    assert done.code == code, done.stderr
    rows = done.summary["rows"]
    assert rows["aborted"] > 0 and rows["succeeded"] > 0  # type: ignore[index]
    assert rows["aborted"] + rows["succeeded"] == 2000  # type: ignore[index]
    assert done.summary["stop_reason"] == reason
    _assert_accounted(done, inventory)


async def test_members_the_api_refuses_are_isolated_and_the_rest_land(tmp_path: Path) -> None:
    # The channel holds 10 members at most: the batch of 16 is refused as a whole (403
    # APIG.3110), halving finds the 10 that fit (in input order), and once a lone member
    # is refused for quota the rest are refused with it, without asking one by one.
    _inventory, source = inventory_file(tmp_path, 16, 1, seed=2)
    ((instance, channel),) = generate.channel_ids(1)
    config = EmulatorConfig(
        tokens=(TOKEN,),
        channels=(ChannelSpec(generate.PROJECT, instance, channel, max_members=10),),
    )
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500", "--batch-size", "16"],
            tmp_path / "reports",
        )
    assert done.code == 1, done.stderr
    assert done.summary["rows"]["succeeded"] == 10  # type: ignore[index]
    rejected = done.report("errors.csv")
    assert [int(r["line"]) for r in rejected] == list(range(12, 18))
    assert {r["outcome"] for r in rejected} == {"rejected"}
    assert {r["error_code"] for r in rejected} == {"APIG.3110"}
    assert {r["http_status"] for r in rejected} == {"403"}
    assert all(r["request_id"] for r in rejected)
    requests = done.summary["requests"]
    # 16 refused, 8 land, 8 refused, 4 refused, 2 land, 2 refused, 1 refused: the channel
    # is full, and the last member is not probed.
    assert requests["split"] > 0 and requests["sent"] == 7  # type: ignore[index]


async def test_an_ecs_member_past_the_ecs_quota_stops_no_ip_member(tmp_path: Path) -> None:
    """The emulator caps ECS members at 10 a channel, the vendor's published default, and
    does not count IP members. The 11th ECS member's lone refusal used to mark the channel
    full, and the IP rows after it were rejected unsent."""
    source = tmp_path / "in.csv"
    rows = [f"p,i,c,,80,vm-{n},web{n}" for n in range(11)]
    rows += [f"p,i,c,10.0.0.{n},80,," for n in range(1, 6)]
    rows += ["p,i,c,,80,vm-late,late"]  # another ECS member after them: refused on its own
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,port,ecs_id,ecs_name\n" + "\n".join(rows) + "\n"
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500"], tmp_path / "r"
        )
        state = await get_json(emulator.url + "/_emulator/state")
    assert done.code == 1, done.stderr
    rejected = done.report("errors.csv")
    assert [(r["ecs_id"], r["error_code"]) for r in rejected] == [
        ("vm-10", "APIG.3110"),
        ("vm-late", "APIG.3110"),
    ]
    (channel,) = state["channels"]  # type: ignore[index]
    live = [m["ecs_id"] or m["host"] for m in channel["members"]]  # type: ignore[index]
    assert sorted(live) == sorted(
        [f"vm-{n}" for n in range(10)] + [f"10.0.0.{n}" for n in range(1, 6)]
    )


async def test_a_second_run_waits_for_no_one_while_the_lock_is_held(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 5, 1, seed=1)
    reports = tmp_path / "reports"
    reports.mkdir()
    with RunLock(reports / ".lock"):
        done = await run_cli(["run", str(source), "--emulator"], reports)
    assert done.code == 75
    assert f"pid {os.getpid()}" in done.stderr
    # Released (or left behind by a dead process): the next run goes ahead.
    again = await run_cli(["run", str(source), "--emulator"], reports)
    assert again.code == 0, again.stderr


async def test_the_token_appears_in_no_output_of_a_run(tmp_path: Path) -> None:
    secret = "tok-3c1f9e0b7d2a-must-not-leak"
    _inventory, source = inventory_file(tmp_path, 200, 4, dup_rate=0.05, invalid_rate=0.05, seed=12)
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    log_file = tmp_path / "run.log"
    outputs: list[str] = []
    codes: list[int] = []
    for tokens in ((secret,), ("someone-else",)):  # accepted, then refused (401)
        config = EmulatorConfig(tokens=tokens, auto_create=True, fail_rate=0.2, seed=3)
        async with Emulator(config) as emulator:
            done = await run_cli(
                [
                    "run",
                    str(source),
                    "--endpoint",
                    emulator.url,
                    "--token-file",
                    str(token_file),
                    "--rate",
                    "500",
                    "--batch-size",
                    "7",
                    "--log-level",
                    "debug",
                    "--log-file",
                    str(log_file),
                ],
                tmp_path / "reports",
                cli_env(token=None),
            )
        outputs += [done.stdout, done.stderr]
        codes.append(done.code)
    assert codes == [4, 3]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != token_file]
    assert log_file in files and any(p.name == "summary.json" for p in files)
    for text in (*outputs, *(p.read_text(errors="replace") for p in files)):
        assert secret not in text


async def test_report_cells_cannot_run_as_spreadsheet_formulas(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,weight,note\n"
        'p1,i1,c1,10.0.0.1,5,"=HYPERLINK(""http://x"")"\n'
        "p1,i1,c1,10.0.0.2,-3,@SUM(A1)\n"
    )
    done = await run_cli(["run", str(source), "--emulator"], tmp_path / "reports")
    assert done.code == 4, done.stderr
    text = (done.run_dir / "succeeded.csv").read_text() + (done.run_dir / "errors.csv").read_text()
    assert "'=HYPERLINK" in text and "'-3" in text and "'@SUM" in text
    assert ",=" not in text and ",-3" not in text and ",@" not in text
    summary = orjson.loads((done.run_dir / "summary.json").read_bytes())
    assert summary["rows"]["invalid"] == 1
    mode = (done.run_dir / "succeeded.csv").stat().st_mode & 0o777
    assert mode == 0o600 and (done.run_dir.stat().st_mode & 0o777) == 0o700
