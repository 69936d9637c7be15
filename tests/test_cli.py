"""The command line as a user meets it: errors that name the problem, plan, layered options."""

from __future__ import annotations

import asyncio
import gzip
import re
import signal
import sys
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.clirun import cli_env, inventory_file, run_cli
from worker.cli import UsageError, parse
from worker.config import (
    ENV_PREFIX,
    OTHER_VARIABLES,
    Config,
    options,
    unknown_variables,
    variable,
)


def _inventory(tmp_path: Path, count: int = 50, channels: int = 3) -> Path:
    return inventory_file(tmp_path, count, channels, dup_rate=0.1, seed=4)[1]


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["run", "missing.csv", "--emulator"], {}, "missing.csv: no such file"),
        (["run", "{inventory}"], {"VPC_MEMBERS_ENDPOINT": "http://127.0.0.1:9"}, "no credentials"),
        (["run", "{inventory}"], {"VPC_MEMBERS_TOKEN": "t"}, "no endpoint"),
        (["run", "-", "--emulator"], {}, "needs --format"),
        (["run", "{inventory}", "--emulator", "--rate", "0"], {}, "--rate"),
        (["run", "{inventory}", "--emulator"], {"VPC_MEMBERS_RATE": "fast"}, "VPC_MEMBERS_RATE"),
        (["run", "{headless}", "--emulator"], {}, "no column vpc_channel_id (or --channel-id)"),
        (["run", "{inventory}", "--emulator", "--config", "{config}"], {}, "unknown option"),
        (["run", "{inventory}", "{again}", "--emulator"], {}, "is named twice"),
        (["run", "{inventory}", "--emulator", "--metrics-file", "."], {}, "must name a file"),
        (["run", "{inventory}", "--emulator"], {"VPC_MEMBERS_METRICS_FILE": ""}, "must not be"),
        (["run", "{inventory}", "--emulator"], {"VPC_MEMBERS_DRY_RUN": "1"}, "would write"),
        (["run", "{inventory}", "--emulator", "--config", "{twice}"], {}, "given twice"),
    ],
    ids=[
        "missing-file",
        "no-token",
        "no-endpoint",
        "stdin-format",
        "bad-flag",
        "bad-env",
        "missing-column",
        "bad-config",
        "named-twice",
        "metrics-file-a-directory",
        "metrics-file-empty",
        "dry-run-for-run",
        "config-key-twice",
    ],
)
async def test_configuration_errors_exit_2_and_say_what_is_wrong(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    headless = tmp_path / "headless.csv"
    headless.write_text("project_id,instance_id,host\np,i,10.0.0.1\n")
    config = tmp_path / "bad.toml"
    config.write_text("rat = 5\n")
    twice = tmp_path / "twice.toml"
    twice.write_text("batch-size = 5\nbatch_size = 7\n")
    inventory = _inventory(tmp_path)
    again = tmp_path / "." / inventory.name  # the same file, spelt otherwise
    names = {
        "inventory": inventory,
        "headless": headless,
        "config": config,
        "again": again,
        "twice": twice,
    }
    argv = [a.format(**names) for a in args]
    done = await run_cli(argv, tmp_path / "reports", cli_env(token=None, **env))
    assert done.code == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"prune": "false"}, "--prune: must be True or False, got 'false'"),
        ({"dry_run": 1}, "--dry-run: must be True or False"),
        ({"inputs": "servers.csv"}, "inputs: a sequence of paths"),
        ({"metrics_file": Path(".")}, "--metrics-file: must name a file"),
        ({"resume": ""}, "--resume: must not be empty"),
        # None would turn a bound off, or break a run midway.
        ({"timeout": None}, "--timeout: must be given, got None"),
        ({"api": None}, "--api: must be given, got None"),
    ],
)
def test_the_python_api_checks_every_setting_as_the_command_line_does(
    settings: dict[str, object], says: str
) -> None:
    """A switch given "false" was kept as a string, which is true: prune="false" pruned."""
    with pytest.raises(ValueError, match=re.escape(says)):
        Config(**{"inputs": ("servers.csv",), **settings})  # type: ignore[arg-type]


def test_the_python_api_keeps_each_setting_as_parsed_and_no_secret_in_its_repr() -> None:
    from decimal import Decimal

    from worker.config import Format

    config = Config(
        inputs=("servers.csv",),
        format="csv",
        report_format="ndjson",
        rate=Decimal("500"),
        proxy="http://user:pass-SECRET@proxy.example:3128",
    )
    # "csv" == Format.CSV, but a run reads .value: the parsed member is kept.
    assert type(config.format) is Format and type(config.report_format) is Format
    assert type(config.rate) is float
    assert "pass-SECRET" not in repr(config)


async def test_the_commonest_mistakes_are_named_with_what_to_do(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path)
    text = "project_id,instance_id,vpc_channel_id,host\np,i,c,10.0.0.1\n"
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text(text.replace(",", ";"))
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text(text, encoding="utf-16")
    zipped = tmp_path / "zipped.csv"
    zipped.write_bytes(gzip.compress(text.encode()))
    a_file = tmp_path / "a-file"
    a_file.touch()
    cases = [
        (["plan", str(inventory)], a_file, "--reports-dir " + str(a_file) + ": not a directory"),
        (
            ["run", str(inventory), "--emulator", "--lock-file", str(tmp_path / "no" / "lock")],
            tmp_path / "r",
            "--lock-file " + str(tmp_path / "no" / "lock") + ": No such file or directory",
        ),
        (["plan", str(semicolons)], tmp_path / "r", "separated by ';'? CSV columns are sepa"),
        (["plan", str(utf16)], tmp_path / "r", "(it looks like UTF-16: save it as UTF-8)"),
        (["plan", str(zipped)], tmp_path / "r", "(it looks gzip-compressed: name it .csv.gz)"),
    ]
    for args, reports, says in cases:
        done = await run_cli(args, reports)
        assert done.code == 2 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "Errno" not in done.stderr
    # A refused header leaves no run directory behind (it held run.json alone).
    assert not list((tmp_path / "r").glob("*/run.json"))


async def _signalled_reading_stdin(
    args: list[str], rows: int, reports: Path, signum: signal.Signals
) -> tuple[int, str]:
    """``vpc-members ARGS - --format csv`` given ``rows`` rows on a stdin it keeps open,
    then ``signum`` once it is reading: its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, "-", "--format", "csv",
        "--reports-dir", str(reports), "--log-format", "json",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(b"project_id,instance_id,vpc_channel_id,host\n")
    process.stdin.write(b"p,i,c,10.0.0.1\n" * rows)
    await process.stdin.drain()
    async with asyncio.timeout(60):  # a hang guard
        while not list(reports.glob("2*/run.json")):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # reading stdin, which stays open
        process.send_signal(signum)
        stderr = (await process.stderr.read()).decode()
        return await process.wait(), stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_plan_stopped_by_a_signal_exits_128_plus_it_in_one_line(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C during plan printed a KeyboardInterrupt traceback; SIGTERM killed it."""
    code, stderr = await _signalled_reading_stdin(["plan"], 100, tmp_path / "r", signum)
    assert code == 128 + signum, stderr
    assert f"plan stopped by {signum.name}; it sent nothing" in stderr
    assert "Traceback" not in stderr and '"event":"run_stopping"' in stderr.replace(" ", "")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_run_reading_stdin_still_open_stops_on_a_signal_with_its_code(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Its thread, blocked reading stdin, held stdin's lock: the interpreter's exit
    aborted on it (exit 134, 'Fatal Python error')."""
    reports = tmp_path / "r"
    code, stderr = await _signalled_reading_stdin(["run", "--emulator"], 10, reports, signum)
    assert code == 128 + signum, stderr
    assert "Fatal Python error" not in stderr
    summary = orjson.loads(next(reports.glob("2*/summary.json")).read_bytes())
    assert summary["exit_code"] == 128 + signum and summary["rows"]["total"] == 10


async def test_an_input_that_breaks_midway_exits_2_with_earlier_rows_accounted(
    tmp_path: Path,
) -> None:
    plain = _inventory(tmp_path, count=2000, channels=5).read_bytes()
    cut = gzip.compress(plain)[:-300]  # the end of the stream is missing, mid-slice
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(cut)
    readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)
    whole_rows = readable.count(b"\n") - 1  # every complete line but the header
    done = await run_cli(["run", str(broken), "--emulator", "--rate", "1000"], tmp_path / "r")
    assert done.code == 2, done.stderr
    summary = done.summary
    assert "truncated gzip" in str(summary["input_error"])
    rows = summary["rows"]
    # Every row read before the break is accounted for, none more.
    assert rows["total"] == whole_rows < 2000  # type: ignore[index]
    assert rows["total"] == rows["succeeded"] + rows["duplicate"]  # type: ignore[index]


async def test_plan_counts_per_channel_and_sends_nothing(tmp_path: Path) -> None:
    inventory, source = inventory_file(
        tmp_path, 600, 6, dup_rate=0.05, invalid_rate=0.02, seed=6, suffix=".ndjson"
    )
    done = await run_cli(["plan", str(source), "--batch-size", "25"], tmp_path / "reports")
    assert done.code == 4, done.stderr  # only invalid rows did not land
    assert "chan000005" in done.stdout and "a run would send" in done.stdout
    assert "exit code 4 (invalid_rows)" in done.stdout
    assert not (done.run_dir / "succeeded.ndjson").exists()
    errors = done.report("errors.ndjson")
    assert len(errors) == inventory.expected.count("duplicate") + inventory.expected.count(
        "invalid"
    )
    # summary.json adds up: the members a run would send, and the rows of the errors report.
    summary = done.summary
    members = summary["requests"]["members"]  # type: ignore[index]
    assert members == inventory.expected.count("valid") > 0
    assert members + summary["rows"]["total"] == summary["rows_read"] == 600  # type: ignore[index]
    # Its life is logged as a run's is, each event with the run's id (JSON off a terminal).
    events = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    life = [e for e in events if e["event"] in ("run_started", "run_finished")]
    assert [e["event"] for e in life] == ["run_started", "run_finished"]
    assert {e["run_id"] for e in life} == {summary["run_id"]}
    assert life[0]["command"] == "plan" and life[1]["exit_code"] == 4
    assert life[1]["would_send"] == summary["requests"]["would_send"]  # type: ignore[index]


@pytest.mark.parametrize("name", ["empty.csv", "empty.ndjson", "header.csv"])
async def test_a_plan_of_an_input_with_no_row_says_its_exit_code(tmp_path: Path, name) -> None:
    source = tmp_path / name
    header = b"project_id,instance_id,vpc_channel_id,host\n"
    source.write_bytes(header if name == "header.csv" else b"")
    done = await run_cli(["plan", str(source)], tmp_path / "reports")
    assert done.code == 5, done.stderr
    assert "0 rows read" in done.stdout and "exit code 5 (empty_input)" in done.stdout


def test_flags_beat_environment_beat_config_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "vpc.toml"
    config.write_text('rate = 5\nconcurrency = 3\nper-channel-concurrency = 2\napi = "apig"\n')
    env = {"VPC_MEMBERS_CONCURRENCY": "6", "VPC_MEMBERS_CONFIG": str(config)}
    _, args = parse(["run", "x.csv", "--per-channel-concurrency", "4"], env)
    assert args is not None
    assert args.rate == 5.0  # config
    assert args.concurrency == 6  # environment over config
    assert args.per_channel_concurrency == 4  # flag over both
    assert args.api == "apig"
    assert args.batch_size == 100  # default
    with pytest.raises(UsageError, match="VPC_MEMBERS_API"):
        parse(["run", "x.csv"], {"VPC_MEMBERS_API": "aws"})


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["sync", "x.csv", "--max-prun", "20"],
            "vpc-members sync: error: unrecognized arguments: --max-prun 20 (did you mean "
            "--max-prune?)",
        ),
        # Refused by the command, whose usage lists the flags; no guess when none is close.
        (["plan", "x.csv", "--bach-size=5"], "usage: vpc-members plan [-h]"),
        (["emulator", "--zzz"], "vpc-members emulator: error: unrecognized arguments: --zzz\n"),
        (["run", "x.csv", "--shard", "4/4"], "the index must be 0..3"),
        (["run", "x.csv", "--shard", "two/4"], "must be I/N or auto/N"),
        # Limits in plain digits, as they are typed.
        (["run", "x.csv", "--max-body-bytes", "20000000"], "must be 1024..12582912, got 20000000"),
    ],
)
def test_shortened_flags_and_impossible_shards_are_refused_at_parse_time(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_a_proxy_password_is_refused_as_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    assert main(["run", "x.csv", "--proxy", "http://u:pass-SECRET@127.0.0.1:3128"]) == 2
    said = capsys.readouterr().err
    assert "set VPC_MEMBERS_PROXY (or HTTPS_PROXY)" in said and "pass-SECRET" not in said


def test_ctrl_c_before_a_command_starts_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the command's modules were still being imported gave a traceback."""
    from worker import cli

    def interrupted(arguments: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_arguments", interrupted)
    assert cli.main(["plan", "x.csv"]) == 130
    err = capsys.readouterr().err
    assert err == "vpc-members: interrupted before it sent anything\n"


def test_the_readme_lists_every_option_as_declared() -> None:
    from worker.config import default, options

    rows = [
        "| key (flag `--key`, variable `VPC_MEMBERS_KEY`) | commands | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, option in options().items():
        value = default(name)
        shown = "" if value in (None, False) else f"`{getattr(value, 'value', value)}`"
        commands = ", ".join(c for c in ("run", "sync", "plan") if c in option.commands)
        rows.append(f"| `{name.replace('_', '-')}` | {commands} | {shown} | {option.help} |")
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    listed = readme.split("<!-- options:begin -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert listed == "\n".join(rows), "regenerate the README's options table from worker/config.py"


@given(st.sets(st.sampled_from(sorted(OTHER_VARIABLES.union(map(variable, options()))))),
       st.sets(st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True)))  # fmt: skip
def test_unknown_variables_are_those_of_the_prefix_no_setting_has(
    settings: set[str], others: set[str]
) -> None:
    env = dict.fromkeys(settings | others | {ENV_PREFIX + other for other in others}, "x")
    unknown = unknown_variables(env)
    assert unknown == sorted(unknown)
    assert set(unknown) == {name for name in env if name.startswith(ENV_PREFIX)} - settings


def test_every_variable_the_code_names_is_a_setting() -> None:
    package = Path(__file__).parent.parent / "worker"
    named = {
        found
        for path in package.rglob("*.py")
        for found in re.findall(r"VPC_MEMBERS_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*<])", path.read_text())
    }
    assert {"VPC_MEMBERS_TOKEN", "VPC_MEMBERS_REFERENCE_LANE", "VPC_MEMBERS_RATE"} <= named
    assert unknown_variables(dict.fromkeys(named, "")) == []


async def test_a_misspelt_setting_is_named_in_the_log_never_its_value(tmp_path: Path) -> None:
    env = cli_env(VPC_MEMBERS_RAET="5", VPC_MEMBERS_TOKN="s3cret-value", VPC_MEMBERS_RATE="50")
    done = await run_cli(["plan", str(_inventory(tmp_path))], tmp_path / "reports", env)
    assert done.code == 0, done.stderr
    warned = [
        line["variable"]
        for line in map(orjson.loads, done.stderr.splitlines())
        if line.get("event") == "variable_unknown"
    ]
    assert warned == ["VPC_MEMBERS_RAET", "VPC_MEMBERS_TOKN"]
    assert "s3cret-value" not in done.stderr + done.stdout
