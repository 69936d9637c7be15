"""Operating it (issue 13): shards and merge, metrics, one config file, first impressions."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench import generate
from tests.clirun import TOKEN, cli_env, get_json, inventory_file, run_bare, run_cli
from worker.emulator import Emulator, EmulatorConfig
from worker.shards import Shard, parse_shard, shard_of


def _metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# -- shards ------------------------------------------------------------------------------------


def test_a_channel_belongs_to_the_same_shard_in_every_process() -> None:
    # The hash is BLAKE2b of the ids, not Python's salted hash(): a fresh interpreter
    # with another PYTHONHASHSEED places the channels exactly as this one does.
    channels = [("p", f"i{n % 3}", f"c{n}") for n in range(200)]
    here = [shard_of(channel, 4) for channel in channels]  # type: ignore[arg-type]
    code = (
        "import sys, orjson; from worker.shards import shard_of; "
        f"print(orjson.dumps([shard_of(tuple(c), 4) for c in {channels!r}]).decode())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin"},
        cwd=Path(__file__).parent.parent,
    )
    assert orjson.loads(there.stdout) == here
    assert set(here) == {0, 1, 2, 3}
    assert shard_of(None, 4) == 0


@pytest.mark.parametrize(
    ("text", "env", "shard"),
    [
        ("0/4", {}, Shard(0, 4)),
        ("3/4", {}, Shard(3, 4)),
        ("auto/4", {"JOB_COMPLETION_INDEX": "2"}, Shard(2, 4)),
    ],
)
def test_parse_shard(text: str, env: dict[str, str], shard: Shard) -> None:
    assert parse_shard(text, env) == shard


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "x/4", "1/0", "auto/4"])
def test_parse_shard_refuses_what_is_not_a_shard(text: str) -> None:
    with pytest.raises(ValueError):
        parse_shard(text, {})


async def test_four_shards_land_the_first_wins_set_once_and_merge_adds_up(tmp_path: Path) -> None:
    inventory, source = inventory_file(
        tmp_path, 4000, 40, dup_rate=0.03, invalid_rate=0.01, seed=91
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        shards = await asyncio.gather(
            *(
                run_cli(
                    [
                        "run",
                        str(source),
                        "--endpoint",
                        emulator.url,
                        "--rate",
                        "100",
                        "--shard",
                        f"{index}/4",
                    ],
                    tmp_path / f"shard-{index}",
                )
                for index in range(4)
            )
        )
        state = await get_json(emulator.url + "/_emulator/state")
    for done in shards:
        assert done.code == 4, done.stderr
    channels_of = [
        {row["vpc_channel_id"] for row in done.report("succeeded.csv") + done.report("errors.csv")}
        for done in shards
    ]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not (channels_of[a] & channels_of[b] - {""})
    landed = [
        (c["vpc_channel_id"], m["host"])
        for c in state["channels"]  # type: ignore[attr-defined]
        for m in c["members"]
    ]
    wanted = {
        (str(r["vpc_channel_id"]), str(ipaddress.ip_address(str(r["host"]))))
        for r, kind in zip(inventory.rows, inventory.expected, strict=True)
        if kind == "valid"
    }
    assert len(landed) == len(set(landed)) and set(landed) == wanted

    merged = tmp_path / "merged"
    done = await run_bare(["merge", *(str(d.run_dir) for d in shards), "--out", str(merged)])
    assert done.code == 4, done.stderr
    summary = orjson.loads((merged / "summary.json").read_bytes())
    assert summary["rows"]["total"] == len(inventory.rows)
    assert summary["endpoint"] == shards[0].summary["endpoint"] == emulator.url
    assert summary["rows"]["invalid"] == Counter(inventory.expected)["invalid"]
    rows = [line for line in (merged / "succeeded.csv").read_text().splitlines()[1:]]
    rows += (merged / "errors.csv").read_text().splitlines()[1:]
    assert len(rows) == len(inventory.rows)
    # The Python API takes the paths as strings too.
    from worker.merge import merge_runs

    again = merge_runs([str(d.run_dir) for d in shards], str(tmp_path / "again"))
    assert again.rows == summary["rows"]


async def test_merge_refuses_runs_that_do_not_belong_together(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 200, 4, seed=92)
    (tmp_path / "o").mkdir()
    _other, other = inventory_file(tmp_path / "o", 200, 4, seed=93)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        base = ["--endpoint", emulator.url, "--rate", "500"]
        zero = await run_cli(["run", str(source), *base, "--shard", "0/2"], tmp_path / "a")
        one = await run_cli(["run", str(source), *base, "--shard", "1/2"], tmp_path / "b")
        foreign = await run_cli(["run", str(other), *base, "--shard", "1/2"], tmp_path / "c")
        plain = await run_cli(["run", str(source), *base], tmp_path / "d")
        ndjson = await run_cli(
            ["run", str(source), *base, "--shard", "1/2", "--report-format", "ndjson"],
            tmp_path / "e",
        )
    cases = [
        ([zero.run_dir], "missing"),
        ([zero.run_dir, zero.run_dir], "given twice"),
        ([zero.run_dir, foreign.run_dir], "same inputs"),
        ([zero.run_dir, plain.run_dir], "was not run with --shard"),
        ([zero.run_dir, ndjson.run_dir], "different formats"),
    ]
    for runs, says in cases:
        done = await run_bare(["merge", *map(str, runs), "--out", str(tmp_path / f"m{len(says)}")])
        assert done.code == 2, done.stderr
        assert says in done.stderr
    ok = await run_bare(
        ["merge", str(zero.run_dir), str(one.run_dir), "--out", str(tmp_path / "m")]
    )
    assert ok.code == 0, ok.stderr


def _channel(number: int) -> tuple[str, str, str]:
    instance, channel = generate.channel_ids(6)[number]
    return generate.PROJECT, instance, channel


def _live(emulator: Emulator) -> dict[str, dict[str, int]]:
    state = emulator.state.to_json()
    return {
        str(c["vpc_channel_id"]): {str(m["host"]): int(m["weight"]) for m in c["members"]}
        for c in state["channels"]  # type: ignore[attr-defined]
    }


async def test_two_sync_shards_each_touch_only_their_channels_and_together_converge(
    tmp_path: Path,
) -> None:
    # Live: members 0..9 at weight 1 in six channels. Wanted: 0..4 as they are, 5..7 at
    # weight 5, 10..11 new; 8..9 pruned.
    def host(n: int) -> str:
        return f"10.0.0.{n + 1}"

    channels = [_channel(number) for number in range(6)]
    owner = {c[2]: shard_of(c, 2) for c in channels}
    assert set(owner.values()) == {0, 1}
    seeded = {host(n): 1 for n in range(10)}
    wanted = {**{host(n): 1 for n in range(5)}, **{host(n): 5 for n in (5, 6, 7, 10, 11)}}
    lines = ["project_id,instance_id,vpc_channel_id,host,port,weight"]
    for channel in channels:
        lines += [f"{','.join(channel)},{h},80,{w}" for h, w in wanted.items()]
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n")
    async with Emulator(EmulatorConfig(tokens=(TOKEN,))) as emulator:
        for channel in channels:
            emulator.state.add_channel(channel).upsert(
                [(h, {"host": h, "weight": 1, "port": 80}) for h in seeded],  # type: ignore[misc]
                1.7e9,
            )
        sync = ["sync", str(source), "--endpoint", emulator.url, "--rate", "500", "--prune"]
        shards, lists, lives = [], [], []
        for index in range(2):
            before = emulator.stats.by_method["GET"]
            done = await run_cli([*sync, "--shard", f"{index}/2"], tmp_path / f"shard-{index}")
            shards.append(done)
            lists.append(emulator.stats.by_method["GET"] - before)
            lives.append(_live(emulator))
        rehearsed = await run_cli([*sync, "--shard", "0/2", "--dry-run"], tmp_path / "dry")
    # The shards merge, channels.csv too; a dry run does not merge with a real one.
    runs = [str(done.run_dir) for done in shards]
    merged = await run_bare(["merge", *runs, "--out", str(tmp_path / "merged")])
    assert merged.code == 0, merged.stderr
    table = (tmp_path / "merged" / "channels.csv").read_text().splitlines()
    assert len(table) == 1 + len(channels)
    mixed = await run_bare(
        ["merge", str(rehearsed.run_dir), runs[1], "--out", str(tmp_path / "mixed")]
    )
    assert mixed.code == 2 and "same options" in mixed.stderr, mixed.stderr
    for index, done in enumerate(shards):
        assert done.code == 0, done.stderr
        own = {c for c, shard in owner.items() if shard == index}
        # It listed its own channels (one page each) and no other.
        assert lists[index] == len(own)
        reported = done.report("succeeded.csv") + done.report("extras.csv")
        assert {row["vpc_channel_id"] for row in reported} == own
        assert {row["vpc_channel_id"] for row in done.report("channels.csv")} == own
    # After shard 0 alone, shard 1's channels are as they were; after both, all converged.
    assert lives[0] == {c: wanted if owner[c] == 0 else seeded for c in owner}
    assert lives[1] == {c: wanted for c in owner}
    actions = Counter[str]()
    for done in shards:
        actions.update(done.summary["actions"])  # type: ignore[arg-type]
    assert actions == {"unchanged": 5 * 6, "updated": 3 * 6, "created": 2 * 6}
    assert sum(d.summary["extras"]["removed"] for d in shards) == 2 * 6  # type: ignore[index]


async def test_plan_shards_plan_only_their_channels_and_cover_every_row_once(
    tmp_path: Path,
) -> None:
    inventory, source = inventory_file(
        tmp_path, 1200, 12, dup_rate=0.05, invalid_rate=0.03, seed=99
    )
    whole = await run_cli(["plan", str(source)], tmp_path / "whole")
    shards = [
        await run_cli(["plan", str(source), "--shard", f"{index}/2"], tmp_path / f"s{index}")
        for index in range(2)
    ]
    assert whole.code == 4, whole.stderr
    planned = []
    for index, done in enumerate(shards):
        assert done.code == 4, done.stderr
        assert done.summary["shard"] == f"{index}/2"
        found = re.search(r"([\d,]+) rows read", done.stdout)
        assert found, done.stdout
        planned.append(int(found[1].replace(",", "")))
    # Every row is planned by exactly one shard...
    assert sum(planned) == len(inventory.rows)
    errors = [{(r["source"], r["line"]) for r in d.report("errors.csv")} for d in shards]
    assert not errors[0] & errors[1]
    assert errors[0] | errors[1] == {(r["source"], r["line"]) for r in whole.report("errors.csv")}
    # ...and each shard only channels of its own: no channel is planned twice.
    channels = [{r["vpc_channel_id"] for r in d.report("errors.csv")} - {""} for d in shards]
    assert channels[0] and channels[1] and not channels[0] & channels[1]
    distinct = sum(d.summary["distinct_addresses"] for d in shards)  # type: ignore[misc]
    assert distinct == whole.summary["distinct_addresses"]
    would_send = [d.summary["requests"]["would_send"] for d in shards]  # type: ignore[index]
    assert sum(would_send) == whole.summary["requests"]["would_send"]  # type: ignore[index]
    assert all(would_send)


# -- metrics -------------------------------------------------------------------------------------


async def test_the_metrics_file_parses_and_agrees_with_the_summary(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 500, 5, dup_rate=0.05, invalid_rate=0.02, seed=94)
    metrics = tmp_path / "vpc_members.prom"
    done = await run_cli(
        ["run", str(source), "--emulator", "--rate", "500", "--metrics-file", str(metrics)],
        tmp_path / "r",
    )
    assert done.code == 4, done.stderr
    found = _metrics(metrics)
    rows = done.summary["rows"]
    for outcome, count in rows.items():  # type: ignore[union-attr]
        if outcome != "total":
            assert found[("vpc_members_rows", (("outcome", outcome),))] == count
    assert found[("vpc_members_exit_code", (("command", "run"),))] == 4
    succeeded_at = found[("vpc_members_last_success_timestamp_seconds", (("command", "run"),))]
    assert abs(succeeded_at - time.time()) < 600
    assert found[("vpc_members_requests", (("status", "201"),))] > 0

    # A failed run keeps the last success, so a staleness alert works.
    failed = await run_cli(
        ["run", str(source), "--endpoint", "http://127.0.0.1:1", "--metrics-file", str(metrics)],
        tmp_path / "r",
    )
    assert failed.code == 3
    after = _metrics(metrics)
    assert after[("vpc_members_exit_code", (("command", "run"),))] == 3
    assert (
        after[("vpc_members_last_success_timestamp_seconds", (("command", "run"),))] == succeeded_at
    )
    assert after[("vpc_members_last_run_timestamp_seconds", (("command", "run"),))] >= succeeded_at


def test_a_success_is_carried_over_for_its_own_command_only(tmp_path: Path) -> None:
    from worker.exits import ExitCode
    from worker.metrics import write_metrics

    metrics = tmp_path / "m.prom"
    write_metrics(metrics, "plan", ExitCode.OK, 1000.0)
    write_metrics(metrics, "sync", ExitCode.STOPPED, 2000.0)
    found = _metrics(metrics)
    # The plan's success says nothing of the sync's: an alert on the sync must fire.
    assert not any(name.endswith("last_success_timestamp_seconds") for name, _ in found)
    write_metrics(metrics, "sync", ExitCode.OK, 3000.0)
    write_metrics(metrics, "sync", ExitCode.STOPPED, 4000.0)
    success = ("vpc_members_last_success_timestamp_seconds", (("command", "sync"),))
    assert _metrics(metrics)[success] == 3000.0


async def test_a_run_that_could_not_start_still_writes_its_metrics(tmp_path: Path) -> None:
    metrics = tmp_path / "m.prom"
    done = await run_cli(
        ["run", str(tmp_path / "missing.csv"), "--emulator", "--metrics-file", str(metrics)],
        tmp_path / "r",
    )
    assert done.code == 2
    assert _metrics(metrics)[("vpc_members_exit_code", (("command", "run"),))] == 2


@pytest.mark.parametrize("broken", ["setting", "flag", "log file"])
async def test_a_run_refused_for_its_settings_still_writes_its_metrics(
    tmp_path: Path, broken: str
) -> None:
    # A cron job whose environment broke must not go on showing its last success.
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=96)
    metrics = tmp_path / "m.prom"
    args = ["run", str(source), "--emulator"]
    if broken == "setting":
        args += ["--metrics-file", str(metrics)]
        env = cli_env(VPC_MEMBERS_RATE="fast")
    elif broken == "flag":  # refused by the parser itself
        args += ["--rate", "fast", f"--metrics-file={metrics}"]
        env = cli_env()
    else:
        args += ["--log-file", str(tmp_path / "no-such-dir" / "run.log")]
        env = cli_env(VPC_MEMBERS_METRICS_FILE=str(metrics))
    done = await run_cli(args, tmp_path / "r", env)
    assert done.code == 2, done.stderr
    assert _metrics(metrics)[("vpc_members_exit_code", (("command", "run"),))] == 2


# -- one config file, the latest run, first impressions -------------------------------------------


async def test_one_config_file_serves_plan_and_run(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 100, 2, seed=95)
    config = tmp_path / "vpc.toml"
    config.write_text("emulator = true\nrate = 500\nbatch-size = 20\nprune = true\n")
    env_config = {"VPC_MEMBERS_CONFIG": str(config)}
    from tests.clirun import cli_env

    planned = await run_cli(["plan", str(source)], tmp_path / "p", cli_env(**env_config))
    assert planned.code == 0, planned.stderr
    ran = await run_cli(["run", str(source)], tmp_path / "r", cli_env(**env_config))
    assert ran.code == 0, ran.stderr
    assert (tmp_path / "r" / "latest").resolve() == ran.run_dir.resolve()
    config.write_text("rat = 5\n")
    bad = await run_cli(["plan", str(source)], tmp_path / "p", cli_env(**env_config))
    assert bad.code == 2 and "unknown option(s) rat" in bad.stderr


def test_version_and_help_answer_without_importing_the_world() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "worker", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("vpc-members ")
    probe = (
        "import sys; from worker.cli import build_parser; build_parser().format_help(); "
        "heavy = {'aiohttp', 'structlog', 'rich', 'orjson', 'prometheus_client'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_make_demo_exits_0_and_shows_the_rows_that_did_not_land(tmp_path: Path) -> None:
    root = Path(__file__).parent.parent
    demo = subprocess.run(["make", "-s", "demo"], cwd=root, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "errors.csv" in demo.stdout
    assert "invalid" in demo.stdout and "duplicate" in demo.stdout


async def test_every_log_event_carries_the_run_id(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 300, 3, invalid_rate=0.05, seed=96)
    done = await run_cli(
        ["run", str(source), "--emulator", "--rate", "500", "--log-level", "debug"], tmp_path / "r"
    )
    events = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(events) >= 4
    assert {event.get("run_id") for event in events} == {done.run_dir.name}
    missing = await run_cli(["run", str(tmp_path / "nope.csv"), "--emulator"], tmp_path / "r")
    errors = [orjson.loads(line) for line in missing.stderr.splitlines() if line.startswith("{")]
    assert errors and all(event.get("run_id") for event in errors)


async def test_the_python_api_runs_a_migration_in_a_few_lines(tmp_path: Path) -> None:
    from worker import Config, ExitCode, run, sync

    _inventory, source = inventory_file(tmp_path, 200, 2, seed=97)
    config = Config(inputs=(str(source),), emulator=True, rate=500, reports_dir=tmp_path / "r")
    summary = await run(config)
    assert summary.exit_code is ExitCode.OK
    assert summary.rows["succeeded"] == 200 and summary.run_dir.is_dir()
    checked = await sync(config.replace(prune=True, dry_run=True))
    assert checked.command == "sync" and checked.dry_run
    with pytest.raises(ValueError, match="--rate"):
        Config(inputs=(str(source),), rate=float("nan"))


def test_the_live_progress_line_fits_the_terminal_and_never_cuts_a_log_line(
    tmp_path: Path,
) -> None:
    import os
    import pty
    import re

    _inventory, source = inventory_file(tmp_path, 3000, 30, invalid_rate=0.01, seed=98)
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "60", "LINES": "20", "TERM": "xterm"}
    env.pop("VPC_MEMBERS_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", str(source), "--emulator", "--rate", "40",
         "--batch-size", "25", "--reports-dir", str(tmp_path / "r"), "--log-level", "debug",
         "--progress", "bar", "--log-format", "console"],
        stdin=follower, stdout=follower, stderr=follower, env=env, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(120) == 4
    text = b"".join(chunks).decode("utf-8", "replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    segments = [s for s in re.split(r"[\r\n]+", plain) if s.strip()]
    progress = [s for s in segments if s.startswith("rows ")]
    assert progress, "no progress line was shown"
    assert all(len(s) <= 60 for s in progress)
    assert any("eta" in s for s in progress)
    # Every log event is a whole line of its own: a timestamp, then the event.
    events = [s for s in segments if "run_started" in s or "run_finished" in s]
    assert len(events) == 2
    assert all(re.match(r"\d{4}-\d\d-\d\d", s) for s in events)


def test_the_metrics_file_is_written_through_no_planted_link(tmp_path: Path) -> None:
    # prometheus_client's writer opened PATH.<pid>.<thread id>, following a link there.
    from worker.exits import ExitCode
    from worker.metrics import write_metrics

    path = tmp_path / "m.prom"
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    planted = Path(f"{path}.{os.getpid()}.{threading.current_thread().ident}")
    planted.symlink_to(target)
    write_metrics(path, "run", ExitCode.OK, 1.7e9)
    assert target.read_text() == "untouched\n"
    assert _metrics(path)[("vpc_members_exit_code", (("command", "run"),))] == 0
    assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
