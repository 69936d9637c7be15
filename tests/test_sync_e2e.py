"""sync over loopback: seeded channels, guards, dry runs, a second sync, kill -9 and again."""

from __future__ import annotations

import asyncio
import csv
import re
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
    run_cli,
    start_cli,
    wait_for_landed_rows,
)
from worker.emulator import Emulator, EmulatorConfig

PROJECT = generate.PROJECT
CHANNELS = 6


def _host(channel: int, n: int) -> str:
    return f"10.{channel}.{n // 250}.{n % 250 + 1}"


def _ids(channel: int) -> tuple[str, str, str]:
    instance, vpc_channel_id = generate.channel_ids(CHANNELS)[channel]
    return PROJECT, instance, vpc_channel_id


def _seed(emulator: Emulator, live: int) -> None:
    """Each channel holds members 0..live-1 at weight 1."""
    for channel in range(CHANNELS):
        state = emulator.state.add_channel(_ids(channel))
        hosts = [_host(channel, n) for n in range(live)]
        state.upsert([(h, {"host": h, "weight": 1, "port": 80}) for h in hosts], 1.7e9)  # type: ignore[misc]


def _inventory(path: Path, members: range, changed: range = range(0), extra: str = "") -> Path:
    """Every channel's wanted members: ``members`` at weight 1, ``changed`` at weight 5."""
    lines = ["project_id,instance_id,vpc_channel_id,host,port,weight,owner"]
    for channel in range(CHANNELS):
        project, instance, vpc = _ids(channel)
        for n in members:
            weight = 5 if n in changed else 1
            lines.append(f"{project},{instance},{vpc},{_host(channel, n)},80,{weight},team{n % 3}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _rows_of_channel_0(path: Path, columns: str, *cells: str) -> Path:
    """A CSV of the channel ids and ``columns``, a row of channel 0 for each of ``cells``."""
    project, instance, vpc = _ids(0)
    rows = "".join(f"{project},{instance},{vpc},{row}\n" for row in cells)
    path.write_text(f"project_id,instance_id,vpc_channel_id,{columns}\n{rows}")
    return path


def _live(state: dict[str, object]) -> dict[tuple[str, str], int]:
    return {
        (str(c["vpc_channel_id"]), str(m["host"])): int(m["weight"])
        for c in state["channels"]  # type: ignore[attr-defined]
        for m in c["members"]
    }


async def _writes(url: str) -> int:
    stats = await get_json(url + "/_emulator/stats")
    by_method = stats["requests_by_method"]
    assert isinstance(by_method, dict)
    return int(by_method.get("POST", 0)) + int(by_method.get("DELETE", 0))


async def _sync(emulator: Emulator, source: Path, reports: Path, *flags: str) -> Finished:
    return await run_cli(
        ["sync", str(source), "--endpoint", emulator.url, "--rate", "500", *flags], reports
    )


async def test_sync_creates_updates_leaves_alone_and_prunes(tmp_path: Path) -> None:
    # Live: 0..39. Wanted: 0..29, of which 20..29 changed, and 40..44 new; 30..39 extra.
    source = _inventory(tmp_path / "in.csv", range(45), changed=range(20, 30))
    source.write_text(
        "\n".join(
            line
            for line in source.read_text().splitlines()
            if not any(f".0.{n + 1}," in line for n in range(30, 40))
        )
        + "\n"
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 40)
        done = await _sync(emulator, source, tmp_path / "r", "--prune")
        live = _live(await get_json(emulator.url + "/_emulator/state"))
        again = await _sync(emulator, source, tmp_path / "r2", "--prune")
        stats = await get_json(emulator.url + "/_emulator/stats")
    assert done.code == 0, done.stderr
    summary = done.summary
    assert summary["actions"] == {"unchanged": 120, "updated": 60, "created": 30}
    assert summary["extras"]["removed"] == 60  # type: ignore[index]
    assert summary["rows"]["total"] == 210  # type: ignore[index]
    succeeded = done.report("succeeded.csv")
    assert Counter(r["action"] for r in succeeded) == {
        "unchanged": 120,
        "updated": 60,
        "created": 30,
    }
    assert all(r["member_id"] for r in succeeded) and {r["owner"] for r in succeeded} == {
        "team0",
        "team1",
        "team2",
    }
    extras = done.report("extras.csv")
    assert len(extras) == 60 and {r["fate"] for r in extras} == {"removed"}
    assert all(r["member_id"] for r in extras)
    wanted = {
        (_ids(c)[2], _host(c, n)) for c in range(CHANNELS) for n in (*range(30), *range(40, 45))
    }
    assert set(live) == wanted
    assert all(live[(_ids(c)[2], _host(c, n))] == 5 for c in range(CHANNELS) for n in range(20, 30))
    channels = (done.run_dir / "channels.csv").read_text().splitlines()
    assert len(channels) == 1 + CHANNELS
    # The second sync finds everything right: one list per channel, no write.
    assert again.code == 0, again.stderr
    assert again.summary["actions"] == {"unchanged": 210}
    assert again.summary["requests"]["by_operation"] == {"list": CHANNELS}  # type: ignore[index]
    assert stats["members_deleted"] == 60


async def test_a_dry_run_shows_every_channel_and_sends_no_write(tmp_path: Path) -> None:
    source = _inventory(tmp_path / "in.csv", range(30), changed=range(0, 3))
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 35)
        before = await _writes(emulator.url)
        done = await _sync(emulator, source, tmp_path / "r", "--prune", "--dry-run")
        after = await _writes(emulator.url)
        in_sync = await _sync(
            emulator, _inventory(tmp_path / "same.csv", range(35)), tmp_path / "s", "--dry-run"
        )
        # Its pending rows are not landed ones: a resume of it would send none of them.
        resume = ("--prune", "--resume", str(done.run_dir))
        resumed = await _sync(emulator, source, tmp_path / "r", *resume)
        # Nor of one whose run.json did not record the dry run (an earlier version's).
        recorded = done.run_dir / "run.json"
        older = orjson.loads(recorded.read_bytes())
        del older["decisions"]["dry_run"]
        recorded.write_bytes(orjson.dumps(older))
        resumed_older = await _sync(emulator, source, tmp_path / "r", *resume)
        assert await _writes(emulator.url) == before
    for refused in (resumed, resumed_older):
        assert refused.code == 2 and "was a --dry-run" in refused.stderr, refused.stderr
    assert after == before
    assert done.code == 7, done.stderr
    assert done.summary["rows"]["pending"] == 3 * CHANNELS  # type: ignore[index]
    assert done.summary["extras"]["to_remove"] == 5 * CHANNELS  # type: ignore[index]
    for channel in range(CHANNELS):
        assert _ids(channel)[2] in done.stdout
    assert in_sync.code == 0, in_sync.stderr


@pytest.mark.parametrize(
    ("source_format", "report_format"), [("ndjson", "ndjson"), ("ndjson", "csv"), ("csv", "ndjson")]
)
async def test_a_dry_runs_pending_rows_say_their_action_in_every_report_format(
    tmp_path: Path, source_format: str, report_format: str
) -> None:
    """Pending rows went to succeeded.* in the shape of error rows (outcome, no action)
    unless both the input and the reports were CSV."""
    source = _inventory(tmp_path / "in.csv", range(3), changed=range(1))
    if source_format == "ndjson":
        rows = list(csv.DictReader(source.read_text().splitlines()))
        source = tmp_path / "in.ndjson"
        source.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 2)
        done = await _sync(
            emulator, source, tmp_path / "r", "--dry-run", "--report-format", report_format
        )
    assert done.code == 7, done.stderr
    rows = done.report(f"succeeded.{report_format}")
    actions = sorted(str(row["action"]) for row in rows)
    assert actions == sorted(["to_create", "to_update", "unchanged"] * CHANNELS)
    assert not any(row.get("outcome") for row in rows)


async def test_an_update_keeps_the_live_values_of_the_fields_the_inventory_leaves_empty(
    tmp_path: Path,
) -> None:
    """A field the inventory leaves empty is no difference, and an update must not reset
    it: the upsert gives a field left out its default, so a port changed in the inventory
    also reset the live weight, backup flag and group, reported nowhere, for good."""
    source = _rows_of_channel_0(
        tmp_path / "in.csv", "host,port,weight", "10.0.0.1,9090,", "10.0.0.2,8080,"
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        state = emulator.state.add_channel(_ids(0))
        fields = {"port": 8080, "weight": 7, "is_backup": True, "member_group_name": "blue"}
        state.upsert([(h, {"host": h, **fields}) for h in ("10.0.0.1", "10.0.0.2")], 1.7e9)  # type: ignore[misc]
        done = await _sync(emulator, source, tmp_path / "r")
        again = await _sync(emulator, source, tmp_path / "s")
        live = {m["host"]: m for m in state}
    assert done.code == 0, done.stderr
    actions = {row["host"]: row["action"] for row in done.report("succeeded.csv")}
    assert actions == {"10.0.0.1": "updated", "10.0.0.2": "unchanged"}
    assert {k: live["10.0.0.1"][k] for k in fields} == {**fields, "port": 9090}  # type: ignore[literal-required]
    assert {k: live["10.0.0.2"][k] for k in fields} == fields  # type: ignore[literal-required]
    assert again.code == 0 and again.summary["requests"]["by_operation"] == {"list": 1}  # type: ignore[index]


async def test_the_max_prune_guard_keeps_a_channel_and_the_run_does_not_exit_0(
    tmp_path: Path,
) -> None:
    source = _inventory(tmp_path / "in.csv", range(10))
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 40)
        done = await _sync(emulator, source, tmp_path / "r", "--prune", "--max-prune", "50")
        live = _live(await get_json(emulator.url + "/_emulator/state"))
    assert done.code == 6, done.stderr
    assert len(live) == 40 * CHANNELS
    extras = done.report("extras.csv")
    assert {r["fate"] for r in extras} == {"kept"}
    assert {r["reason"] for r in extras} == {"prune_guarded"}
    assert "more than --max-prune 50%" in extras[0]["reason_msg"]
    assert '"event":"channel_not_pruned"' in done.stderr.replace(" ", "")


async def test_a_channel_the_share_guard_keeps_is_not_written_so_the_next_run_keeps_it_too(
    tmp_path: Path,
) -> None:
    # 40 live; the inventory keeps 10 of them and names 30 new ones. Had the 30 been
    # added, the next run would see 30 extras of 70 live (43%) and prune them.
    project, instance, vpc = _ids(0)
    source = tmp_path / "in.csv"
    lines = ["project_id,instance_id,vpc_channel_id,host,port,weight,owner"]
    lines += [f"{project},{instance},{vpc},{_host(0, n)},80,1,x" for n in range(10)]
    lines += [f"{project},{instance},{vpc},10.99.0.{n},80,1,x" for n in range(1, 31)]
    source.write_text("\n".join(lines) + "\n")
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 40)
        runs = [await _sync(emulator, source, tmp_path / f"r{n}", "--prune") for n in (1, 2)]
        live = _live(await get_json(emulator.url + "/_emulator/state"))
        writes = await _writes(emulator.url)
    assert writes == 0 and len(live) == 40 * CHANNELS
    for done in runs:
        assert done.code == 6, done.stderr
        held = done.report("errors.csv")
        assert len(held) == 30 and {r["outcome"] for r in held} == {"pending"}
        assert all(r["error_code"] == "prune_guarded" for r in held)
        assert "not sent: pruning would remove 30 of its 40" in held[0]["error_msg"]
        assert done.summary["rows"]["pending"] == 30  # type: ignore[index]


async def _prune_35_of_40(
    tmp_path: Path, extra: str
) -> tuple[Finished, dict[tuple[str, str], int]]:
    """sync --prune of every channel holding 40, whose inventory names 35, then ``extra``
    lines: the run, and the live state after it."""
    source = _inventory(tmp_path / "in.csv", range(35), extra=extra)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 40)
        done = await _sync(emulator, source, tmp_path / "r", "--prune")
        return done, _live(await get_json(emulator.url + "/_emulator/state"))


@pytest.mark.parametrize(
    "bad", ["{p},{i},{c},10.0.0.300,80,1,x\n", "{p},{i},bad/id,10.1.1.1,80,1,x\n"]
)
async def test_an_invalid_row_keeps_channels_from_being_pruned(tmp_path: Path, bad: str) -> None:
    project, instance, vpc = _ids(0)
    done, live = await _prune_35_of_40(tmp_path, bad.format(p=project, i=instance, c=vpc))
    assert done.code == 6, done.stderr
    kept_channels = {vpc for vpc, _ in live if sum(1 for v, _ in live if v == vpc) == 40}
    if "bad/id" in bad:  # no channel is readable: every channel is kept whole
        assert len(kept_channels) == CHANNELS
    else:  # only the channel with the invalid row
        assert kept_channels == {vpc}


async def test_an_input_that_breaks_partway_keeps_every_channel_from_being_pruned(
    tmp_path: Path,
) -> None:
    # 35 of 40 named, then a quote that never closes: the rows after it are never read,
    # and may name any live member (here, they would have named 35..39 of channel 0).
    project, instance, vpc = _ids(0)
    extra = f'{project},{instance},{vpc},"{_host(0, 35)},80,1,x\n'
    extra += "".join(f"{project},{instance},{vpc},{_host(0, n)},80,1,x\n" for n in range(36, 40))
    done, live = await _prune_35_of_40(tmp_path, extra)
    assert done.code == 2, done.stderr
    assert "CSV syntax" in done.stderr
    assert len(live) == 40 * CHANNELS  # nothing removed
    extras = done.report("extras.csv")
    assert {r["fate"] for r in extras} == {"kept"} and len(extras) == 5 * CHANNELS
    assert all("the input broke" in r["reason_msg"] for r in extras)


async def test_an_ecs_member_the_service_gave_a_host_is_matched_by_its_ecs_id(
    tmp_path: Path,
) -> None:
    # The service fills in an ECS member's host: keyed by it, the row named by its ECS id
    # never matched, and sync --prune removed the member and created it again.
    source = _rows_of_channel_0(
        tmp_path / "in.csv", "host,ecs_id,ecs_name,weight", ",ecs-X,vmX,2", "10.11.0.1,,,"
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        state = emulator.state.add_channel(_ids(0))
        state.upsert(
            [("ecs-X", {"ecs_id": "ecs-X", "ecs_name": "vmX", "weight": 2})],  # type: ignore[list-item]
            1.7e9,
        )
        before = dict(state.get("ecs-X") or {})
        done = await _sync(emulator, source, tmp_path / "r", "--prune")
        after = {m["ecs_id"] or m["host"]: m for m in state}
    assert before["host"]  # given one, as the service does
    assert done.code == 0, done.stderr
    rows = {r["ecs_id"] or r["host"]: r["action"] for r in done.report("succeeded.csv")}
    assert rows == {"ecs-X": "unchanged", "10.11.0.1": "created"}
    assert after["ecs-X"]["id"] == before["id"]  # not removed and made again
    assert not done.report("extras.csv")


async def test_an_extra_whose_removal_was_never_sent_carries_no_request_id(
    tmp_path: Path,
) -> None:
    # A read-only token: the first removal gets 403, and the others are never sent.
    source = _inventory(tmp_path / "in.csv", range(38))
    config = EmulatorConfig(tokens=(TOKEN,), read_only_tokens=("viewer",))
    async with Emulator(config) as emulator:
        _seed(emulator, 40)
        done = await run_cli(
            ["sync", str(source), "--endpoint", emulator.url, "--prune", "--concurrency", "1"],
            tmp_path / "r",
            cli_env(token="viewer"),
        )
    extras = done.report("extras.csv")
    sent = [r for r in extras if r["attempts"] not in ("", "0")]
    unsent = [r for r in extras if r["attempts"] in ("", "0")]
    assert sent and unsent, extras
    assert all(r["request_id"] for r in sent)
    assert not any(r["request_id"] for r in unsent)


async def test_a_sync_killed_midway_and_run_again_converges(tmp_path: Path) -> None:
    source = _inventory(tmp_path / "in.csv", range(60), changed=range(0, 20))
    reports = tmp_path / "r"
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 80)
        process = await start_cli(
            [
                "sync",
                str(source),
                "--endpoint",
                emulator.url,
                "--prune",
                "--rate",
                "15",
                "--batch-size",
                "5",
            ],
            reports,
        )
        run_dir = await wait_for_landed_rows(reports, at_least=60)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        resumed = await run_cli(
            [
                "sync",
                str(source),
                "--endpoint",
                emulator.url,
                "--prune",
                "--rate",
                "500",
                "--resume",
                str(run_dir),
            ],
            reports,
        )
        live = _live(await get_json(emulator.url + "/_emulator/state"))
        before = await _writes(emulator.url)
        third = await _sync(emulator, source, tmp_path / "r3", "--prune")
        after = await _writes(emulator.url)
    assert resumed.code == 0, resumed.stderr
    rows = resumed.report("succeeded.csv") + resumed.report("errors.csv")
    assert Counter((r["source"], r["line"]) for r in rows) == Counter(
        {(str(source), str(line)): 1 for line in range(2, 2 + 60 * CHANNELS)}
    )
    assert set(live) == {(_ids(c)[2], _host(c, n)) for c in range(CHANNELS) for n in range(60)}
    assert all(live[(_ids(c)[2], _host(c, n))] == 5 for c in range(CHANNELS) for n in range(20))
    assert third.code == 0 and after == before


async def _stopped_while_pruning(
    emulator: Emulator, source: Path, reports: Path, writes: int, stop: signal.Signals
) -> Path:
    """The run directory of a sync --prune of ``source`` sent ``stop`` once the emulator
    has taken ``writes`` writes (at 10 a second, so a stop falls between two)."""
    process = await start_cli(
        ["sync", str(source), "--endpoint", emulator.url, "--prune", "--rate", "10"], reports
    )
    async with asyncio.timeout(60):  # a hang guard
        while await _writes(emulator.url) < writes:
            await asyncio.sleep(0.05)
    process.send_signal(stop)
    await process.wait()
    (run_dir,) = [path for path in reports.iterdir() if path.name[0].isdigit()]
    return run_dir


async def test_a_sync_killed_during_its_removals_has_reported_those_done(tmp_path: Path) -> None:
    # Only removals: no post lands, whose settling would flush the reports.
    source = _inventory(tmp_path / "in.csv", range(40))
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 60)
        run_dir = await _stopped_while_pruning(emulator, source, tmp_path / "r", 8, signal.SIGKILL)
        deleted = await _writes(emulator.url)
    text = (run_dir / "extras.csv").read_text()
    removed = text.count(",removed,")
    # Each removal answered is in the report; one per channel may have been in flight.
    assert deleted - CHANNELS <= removed <= deleted, text


async def test_a_sync_stopped_during_its_removals_resumes_them(tmp_path: Path) -> None:
    # Every row is already right (unchanged, settled at the diff): the stop comes while the
    # extras are being deleted, so the resumed run has no row left to send, and must list
    # the channels all the same to find the extras still live.
    source = _inventory(tmp_path / "in.csv", range(40))
    reports = tmp_path / "r"
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 60)
        # Some removals done, most not.
        run_dir = await _stopped_while_pruning(emulator, source, reports, 5, signal.SIGTERM)
        resumed = await run_cli(
            ["sync", str(source), "--endpoint", emulator.url, "--prune", "--rate", "500",
             "--resume", str(run_dir)],
            reports,
        )  # fmt: skip
        live = _live(await get_json(emulator.url + "/_emulator/state"))
    assert resumed.code == 0, resumed.stderr
    assert set(live) == {(_ids(c)[2], _host(c, n)) for c in range(CHANNELS) for n in range(40)}
    # Each extra has one row, removed: those of the first pass kept, the rest found again.
    extras = resumed.report("extras.csv")
    assert Counter((r["vpc_channel_id"], r["host"]) for r in extras) == Counter(
        {(_ids(c)[2], _host(c, n)): 1 for c in range(CHANNELS) for n in range(40, 60)}
    )
    assert {r["fate"] for r in extras} == {"removed"}
    assert resumed.summary["extras"]["removed"] == 20 * CHANNELS  # type: ignore[index]


def test_the_channel_table_is_readable_at_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.display import print_channels

    row = {
        "project_id": PROJECT,
        "instance_id": "8f1a2b3c4d5e6f708192a3b4c5d6e7f8",
        "vpc_channel_id": "005b7e9c1d3f5a7b9c0d2e4f6a8b0cab",
        "creates": 123_456,
        "updates": 99_999,
        "unchanged": 1_000_000,
        "removals": 55_555,
        "kept": 4_444,
        "failed": "",
    }
    print_channels([row, {**row, "creates": 0}], every=True)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert any("005b7e9c1d3f5a7b9c0d2e4f6a8b0cab" in line for line in lines)


def test_a_channel_that_stopped_is_not_counted_in_sync(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.display import print_channels

    zero = dict.fromkeys(("creates", "updates", "unchanged", "removals", "kept"), 0)
    rows = [
        {"vpc_channel_id": "in-sync", **zero, "unchanged": 5, "failed": ""},
        {"vpc_channel_id": "missing", **zero, "failed": "APIG.3023"},
        {"vpc_channel_id": "unread", **zero, "failed": "APIG.9999"},
    ]
    print_channels(rows, every=False)
    out = capsys.readouterr().out
    assert "missing" in out and "unread" in out and "in-sync" not in out
    assert "1 channels already in sync" in out
    assert "2 channel(s) stopped before they were in sync: channels.csv says why" in out


def _printed_counts(stdout: str) -> dict[str, int]:
    """The terminal summary's rows, label -> count ("created", "removed", ...)."""
    counts: dict[str, int] = {}
    for line in stdout.splitlines():
        found = re.fullmatch(r"\W*([a-z][a-z _]*?)\s*│\s*([\d,]+)\s*│", line.strip())
        if found:
            counts[found[1]] = int(found[2].replace(",", ""))
    return counts


def _printed_channels(stdout: str) -> dict[str, list[int]]:
    """The channel table's rows: channel id -> create, update, same, remove, kept."""
    table: dict[str, list[int]] = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 6 and all(cell.isdigit() for cell in cells[1:]):
            table[cells[0]] = [int(cell) for cell in cells[1:]]
    return table


async def test_reads_are_paced_by_the_same_rate_limit_as_writes(tmp_path: Path) -> None:
    # The emulator's bucket holds one request and refills at 20/s. Paced at 10/s, every
    # request, read or write, arrives about 100 ms after the one before and none meets a
    # 429; the six channels' reads sent at once would.
    source = _inventory(tmp_path / "in.csv", range(10), changed=range(2))
    config = EmulatorConfig(tokens=(TOKEN,), rate=20, burst=1)
    async with Emulator(config) as emulator:
        _seed(emulator, 10)
        done = await run_cli(
            ["sync", str(source), "--endpoint", emulator.url, "--rate", "10"], tmp_path / "r"
        )
        stats = await get_json(emulator.url + "/_emulator/stats")
    assert done.code == 0, done.stderr
    assert stats["requests_by_method"] == {"GET": CHANNELS, "POST": CHANNELS}
    assert stats["throttled"] == 0


@pytest.mark.parametrize("per_channel", [1, 4])
async def test_writes_to_one_channel_stay_serialised_through_posts_and_deletes(
    tmp_path: Path, per_channel: int
) -> None:
    # The service fails a write to a channel while another is in progress (500
    # APIG.9999). One request at a time per channel, the default, never overlaps two,
    # posts or deletes; four at a time do, so the emulator would tell. A single attempt
    # turns any conflict into a failure the summary shows.
    source = _inventory(tmp_path / "in.csv", range(10, 45), changed=range(20, 30))
    config = EmulatorConfig(tokens=(TOKEN,), concurrent_write_conflicts=True, latency_ms=30)
    async with Emulator(config) as emulator:
        _seed(emulator, 40)
        done = await _sync(
            emulator,
            source,
            tmp_path / "r",
            "--prune",
            "--max-attempts",
            "1",
            "--per-channel-concurrency",
            str(per_channel),
        )
        stats = await get_json(emulator.url + "/_emulator/stats")
    conflicts = stats["faults"].get("conflict", 0)  # type: ignore[attr-defined]
    assert (conflicts == 0) == (per_channel == 1), stats
    if per_channel == 1:
        assert done.code == 0, done.stderr
        assert stats["responses_by_status"] == {
            "200": CHANNELS,
            "201": 2 * CHANNELS,
            "204": 10 * CHANNELS,
        }
        assert done.summary["extras"]["removed"] == 10 * CHANNELS  # type: ignore[index]


async def test_the_terminal_summary_counts_actions_and_the_fates_of_extras(
    tmp_path: Path,
) -> None:
    # Per channel: live 0..39; wanted 10..44 with 20..29 changed: 5 created, 10 updated,
    # 20 unchanged, and 10 extras, kept without --prune and removed by a second sync with it.
    source = _inventory(tmp_path / "in.csv", range(10, 45), changed=range(20, 30))
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 40)
        kept = await _sync(emulator, source, tmp_path / "k")
        pruned = await _sync(emulator, source, tmp_path / "p", "--prune")
    assert kept.code == pruned.code == 0, kept.stderr + pruned.stderr
    first = _printed_counts(kept.stdout)
    assert first["rows total"] == first["rows succeeded"] == 35 * CHANNELS
    assert (first["created"], first["updated"], first["unchanged"]) == (
        5 * CHANNELS,
        10 * CHANNELS,
        20 * CHANNELS,
    )
    assert first["live members not named"] == first["kept"] == 10 * CHANNELS
    assert "removed" not in first
    second = _printed_counts(pruned.stdout)
    assert second["unchanged"] == 35 * CHANNELS
    assert "created" not in second and "updated" not in second and "kept" not in second
    assert second["live members not named"] == second["removed"] == 10 * CHANNELS


async def test_a_dry_run_writes_the_channel_table_it_prints_and_sends_no_write(
    tmp_path: Path,
) -> None:
    # Channel c (0..5) of 35 live members is wanted as c..35 with c..2c-1 changed: one
    # create, c updates, 35-2c unchanged and c removals, so every row of the table differs.
    lines = ["project_id,instance_id,vpc_channel_id,host,port,weight"]
    for channel in range(CHANNELS):
        project, instance, vpc = _ids(channel)
        for n in range(channel, 36):
            weight = 5 if n < 2 * channel else 1
            lines.append(f"{project},{instance},{vpc},{_host(channel, n)},80,{weight}")
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n")
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        _seed(emulator, 35)
        done = await _sync(emulator, source, tmp_path / "r", "--prune", "--dry-run")
        stats = await get_json(emulator.url + "/_emulator/stats")
    assert done.code == 7, done.stderr
    assert stats["requests_by_method"] == {"GET": CHANNELS}
    copy = done.report("channels.csv")
    counts = ("creates", "updates", "unchanged", "removals", "kept")
    written = {row["vpc_channel_id"]: [int(row[key]) for key in counts] for row in copy}
    assert written == {_ids(c)[2]: [1, c, 35 - 2 * c, c, 0] for c in range(CHANNELS)}
    assert {(row["project_id"], row["instance_id"]) for row in copy} == {
        _ids(c)[:2] for c in range(CHANNELS)
    }
    assert _printed_channels(done.stdout) == written
    summary = done.summary
    assert summary["actions"] == {
        "to_create": CHANNELS,
        "to_update": sum(range(CHANNELS)),
        "unchanged": sum(35 - 2 * c for c in range(CHANNELS)),
    }
    assert summary["extras"]["to_remove"] == sum(range(CHANNELS))  # type: ignore[index]
