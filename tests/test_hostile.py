"""A hostile world (issue 10): secrets kept, signals obeyed, bad answers and flags bounded."""

from __future__ import annotations

import asyncio
import gzip
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.clirun import (
    TOKEN,
    Finished,
    cli_env,
    inventory_file,
    run_cli,
    serve,
    wait_for_landed_rows,
)
from worker.emulator import Emulator, EmulatorConfig
from worker.lock import RunLock

SECRET = "tok-9f2c7a41e3b8-secret"
NOBODY = 65534  # "another user": a directory chowned to nobody
_AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can give a directory to another user"
)

Handler = Callable[[web.Request], "asyncio.Future[web.StreamResponse] | web.StreamResponse"]


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A service that refuses every body and echoes the token it was sent."""

    async def refuse(request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token", "")
        body = {"error_code": "APIG.2012", "error_msg": f"bad member for token {token}"}
        return web.json_response(body, status=400)

    runner, url = await serve(refuse)
    try:
        yield url
    finally:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port: int = placeholder.getsockname()[1]
        return port


def _every_output(done: Finished, *extra: Path) -> list[str]:
    files = [p for p in done.reports_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    present = [p for p in (*files, *extra) if p.exists()]
    return [done.stdout, done.stderr, *(p.read_text(errors="replace") for p in present)]


@pytest.mark.parametrize(
    "failure", ["refused", "unreachable", "echoed", "bad-config", "crash-free-success"]
)
async def test_the_secret_reaches_no_output_whatever_fails(
    tmp_path: Path, echo: str, failure: str
) -> None:
    _inventory, source = inventory_file(tmp_path, 120, 3, invalid_rate=0.05, seed=61)
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    log = tmp_path / "run.log"
    args = [
        "run",
        str(source),
        "--token-file",
        str(token_file),
        "--rate",
        "500",
        "--log-level",
        "debug",
        "--log-file",
        str(log),
    ]
    env = cli_env(token=None)
    if failure == "echoed":
        done = await run_cli([*args, "--endpoint", echo], tmp_path / "r", env)
        assert done.code == 1, done.stderr
        assert "[redacted]" in (done.run_dir / "errors.csv").read_text()
    elif failure == "unreachable":
        url = f"http://127.0.0.1:{_free_port()}"
        done = await run_cli([*args, "--endpoint", url], tmp_path / "r", env)
        assert done.code == 3, done.stderr
    elif failure == "bad-config":
        done = await run_cli(
            [*args, "--endpoint", "http://127.0.0.1:1", "--timeout", "inf"], tmp_path / "r", env
        )
        assert done.code == 2, done.stderr
    else:
        tokens = ("another",) if failure == "refused" else (SECRET,)
        async with Emulator(EmulatorConfig(tokens=tokens, auto_create=True)) as emulator:
            done = await run_cli([*args, "--endpoint", emulator.url], tmp_path / "r", env)
        assert done.code == (3 if failure == "refused" else 4), done.stderr
    for text in _every_output(done, log):
        assert SECRET not in text


@pytest.mark.parametrize(
    "where", ["message past the cut", "escaped past the cut", "code", "html", "request id"]
)
async def test_a_long_secret_echoed_anywhere_in_an_answer_is_scrubbed_whole(
    tmp_path: Path, where: str
) -> None:
    # IAM tokens run to kilobytes: an answer's text is cut to 200 or 500 characters, and a
    # token cut in two there would no longer be found by the scrub.
    secret = os.urandom(1500).hex()

    async def refuse(request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token", "")
        if where == "html":
            return web.Response(status=502, text=f"<html>{token}</html>", content_type="text/html")
        if where == "request id":
            headers = {"X-Request-Id": token}
            return web.json_response({"error_code": "APIG.2012", "error_msg": "bad"},
                                     status=400, headers=headers)  # fmt: skip
        if where == "escaped past the cut":
            # JSON may escape any character: the secret is in no form the raw bytes show.
            escaped = token.replace("a", "\\u0061")
            body = f'{{"error_code":"APIG.2012","error_msg":"{"x" * 400}{escaped}"}}'
            return web.Response(status=400, text=body, content_type="application/json")
        code, msg = (
            ("APIG." + token, "bad") if where == "code" else ("APIG.2012", "x" * 400 + token)
        )
        return web.json_response({"error_code": code, "error_msg": msg}, status=400)

    runner, url = await serve(refuse)
    try:
        _inventory, source = inventory_file(tmp_path, 30, 2, seed=64)
        token_file = tmp_path / "token"
        token_file.write_text(secret + "\n")
        done = await run_cli(
            ["run", str(source), "--token-file", str(token_file), "--endpoint", url,
             "--max-attempts", "2", "--rate", "500"],
            tmp_path / "r",
            cli_env(token=None),
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert done.code == 1, done.stderr
    outputs = "\n".join(_every_output(done))
    pieces = {secret[i : i + 16] for i in range(len(secret) - 16)}
    assert not [piece for piece in pieces if piece in outputs]


async def test_a_refused_iam_login_is_tried_once_and_its_echo_shows_no_password(
    tmp_path: Path,
) -> None:
    # The echo escapes the password as JSON may (a slash, a non-ASCII letter), past the
    # cut of 200 characters; the answer is slow, so that many requests wait on the login.
    password = "Pw/Secret-\u00e9\u20ac-" + os.urandom(8).hex()
    logins = 0

    async def refuse(request: web.Request) -> web.Response:
        nonlocal logins
        logins += 1
        await asyncio.sleep(0.3)
        echoed = orjson.dumps(password).decode().replace("/", "\\/")
        echoed = echoed.encode("ascii", "backslashreplace").decode()
        message = f'"{"x" * 190}{echoed[1:-1]}"'
        return web.Response(status=401, text=f'{{"error":{{"message":{message}}}}}')

    runner, url = await serve(refuse)
    try:
        _inventory, source = inventory_file(tmp_path, 200, 20, seed=65)
        secret_file = tmp_path / "password"
        secret_file.write_text(password + "\n", encoding="utf-8")
        env = cli_env(token=None, VPC_MEMBERS_IAM_DOMAIN="acme", VPC_MEMBERS_IAM_USER="ops")
        done = await run_cli(
            ["run", str(source), "--endpoint", url, "--iam-endpoint", url, "--project-id",
             "p1", "--iam-password-file", str(secret_file), "--rate", "100"],
            tmp_path / "r",
            env,
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert done.code == 3, done.stderr
    assert "refused the login" in done.stderr
    assert logins == 1
    outputs = "\n".join(_every_output(done))
    assert not [
        password[i : i + 8] for i in range(len(password) - 8) if password[i : i + 8] in outputs
    ]


def test_a_secret_written_in_json_is_scrubbed_too() -> None:
    from worker.logs import Secrets

    secrets = Secrets()
    password = 'pw"SEC\\ret'
    secrets.add([password])
    echoed = orjson.dumps({"auth": {"password": password}})
    assert "SEC" not in secrets.scrub(echoed.decode())
    assert "SEC" not in secrets.scrub(orjson.loads(echoed)["auth"]["password"])


@pytest.mark.parametrize("bad", ["tok\nen", "tok en", "tök", "tok\r"])
async def test_a_token_that_cannot_be_a_header_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=62)
    done = await run_cli(
        ["run", str(source), "--endpoint", "http://127.0.0.1:1"],
        tmp_path / "r",
        cli_env(token=bad + "-" + SECRET),
    )
    assert done.code == 2, done.stderr
    assert "VPC_MEMBERS_TOKEN" in done.stderr and "cannot carry" in done.stderr
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signals_work_when_nobody_reads_stderr_any_more(
    tmp_path: Path, signum: signal.Signals
) -> None:
    # `vpc-members run ... 2>&1 | tee log`, then the tee goes away: every log write fails.
    _inventory, source = inventory_file(tmp_path, 2000, 20, seed=63)
    reports = tmp_path / "r"
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True, latency_ms=20)
    async with Emulator(config) as emulator:
        read_end, write_end = os.pipe()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            str(source),
            "--endpoint",
            emulator.url,
            "--rate",
            "20",
            "--batch-size",
            "10",
            "--reports-dir",
            str(reports),
            "--log-format",
            "json",
            "--progress",
            "events",
            "--log-level",
            "debug",
            stdout=write_end,
            stderr=write_end,
            env=cli_env(),
        )
        os.close(write_end)
        await wait_for_landed_rows(reports, at_least=30)
        os.close(read_end)
        process.send_signal(signum)
        async with asyncio.timeout(40):  # a hang guard: the drain is 30 s at most
            code = await process.wait()
    assert code == 128 + signum
    summary = orjson.loads(next(reports.glob("2*/summary.json")).read_bytes())
    assert summary["exit_code"] == code


@pytest.mark.parametrize(
    ("stderr", "second"),
    [("read", signal.SIGINT), ("reader gone", signal.SIGINT), ("read", signal.SIGTERM)],
)
async def test_a_second_sigint_during_the_drain_ends_the_run_at_once(
    tmp_path: Path, stderr: str, second: signal.Signals
) -> None:
    # A SIGTERM after the SIGINT ends it too, with 130: the more urgent of the two codes.
    # The service holds every request unanswered and the drain may last an hour: only the
    # second SIGINT can end this run before the hang guard does.
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await request.read()
        arrived.set()
        await release.wait()
        return web.Response(status=503)

    runner, url = await serve(hold)
    _inventory, source = inventory_file(tmp_path, 200, 4, seed=75)
    reports = tmp_path / "r"
    tee = os.pipe() if stderr == "reader gone" else None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", str(source), "--endpoint", url,
        "--drain-timeout", "3600", "--timeout", "3600", "--reports-dir", str(reports),
        "--log-format", "json", "--progress", "events",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=tee[1] if tee else asyncio.subprocess.PIPE,
        env=cli_env(),
    )  # fmt: skip
    if tee:
        os.close(tee[1])
    try:
        async with asyncio.timeout(60):  # a hang guard: the drain would wait an hour
            await arrived.wait()
            process.send_signal(signal.SIGINT)
            if stderr == "read":
                assert process.stderr is not None
                line = b""
                while b'"run_stopping"' not in line:
                    line = await process.stderr.readline()
                    assert line, "the process ended on the first SIGINT"
                assert process.returncode is None  # the first one is draining
                process.send_signal(second)
                await process.communicate()
            else:
                assert tee is not None
                os.close(tee[0])  # the reader of stderr goes away, as a killed `tee` would
                # Nothing tells when the first signal was taken, so more follow until the
                # process ends: any but the first may end it; if none does, the guard fails.
                while True:
                    try:
                        await asyncio.wait_for(process.wait(), 0.5)
                        break
                    except TimeoutError:
                        process.send_signal(signal.SIGINT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        release.set()
        await runner.cleanup()
    assert process.returncode == 130


async def test_a_closed_stdout_does_not_change_the_exit_code(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 50, 1, invalid_rate=0.1, seed=64)
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        str(source),
        "--emulator",
        "--reports-dir",
        str(tmp_path / "r"),
        "--log-format",
        "json",
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    os.close(write_end)
    _, stderr = await process.communicate()
    summary = orjson.loads(next((tmp_path / "r").glob("2*/summary.json")).read_bytes())
    assert process.returncode == summary["exit_code"] == 4, stderr.decode()
    assert b"Traceback" not in stderr


async def test_a_log_file_on_a_full_disk_goes_quiet_and_the_run_goes_on(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 100, 2, seed=65)
    done = await run_cli(
        ["run", str(source), "--emulator", "--log-file", "/dev/full"], tmp_path / "r"
    )
    assert done.code == 0, done.stderr
    assert "Traceback" not in done.stderr


# -- the filesystem is not trusted ---------------------------------------------------------


async def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=66)
    reports = tmp_path / "r"
    reports.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (reports / ".lock").symlink_to(victim)
    done = await run_cli(["run", str(source), "--emulator"], reports)
    assert done.code == 2, done.stderr
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("planted", "code"),
    [
        # A report the resume would append to (and cut a torn tail from): refused.
        ("succeeded.csv", 2),
        # The summary is written anew, to a temporary file renamed over it: the link goes.
        ("summary.json", 0),
    ],
)
async def test_a_file_planted_as_a_symlink_in_a_run_directory_is_never_followed(
    tmp_path: Path, planted: str, code: int
) -> None:
    _inventory, source = inventory_file(tmp_path, 30, 1, seed=67)
    reports = tmp_path / "r"
    first = await run_cli(["run", str(source), "--emulator"], reports)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = first.run_dir / planted
    link.unlink()
    link.symlink_to(victim)
    done = await run_cli(
        ["run", str(source), "--emulator", "--resume", str(first.run_dir)], reports
    )
    assert done.code == code, done.stderr
    assert victim.read_text() == "precious\n"
    if planted == "summary.json":
        assert not link.is_symlink()
        assert orjson.loads(link.read_bytes())["already_landed"] == 30


def test_a_link_planted_at_the_summarys_temporary_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import reports

    # The name is random; made known here, as if someone had guessed it.
    monkeypatch.setattr(reports.secrets, "token_hex", lambda _n: "0badc0de")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".summary.json.0badc0de.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        reports.write_json_atomic(tmp_path / "summary.json", {"rows": 1})
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "summary.json").exists()


async def test_a_reports_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=68)
    reports = tmp_path / "r"
    reports.mkdir()
    reports.chmod(0o777)
    done = await run_cli(["run", str(source), "--emulator"], reports)
    assert done.code == 2, done.stderr
    assert "may be written by others" in done.stderr


@_AS_ROOT
async def test_a_reports_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=72)
    reports = tmp_path / "r"
    reports.mkdir(mode=0o700)
    os.chown(reports, NOBODY, NOBODY)
    done = await run_cli(["run", str(source), "--emulator"], reports)
    assert done.code == 2, done.stderr
    assert f"reports directory {reports} belongs to another user (uid {NOBODY})" in done.stderr
    assert list(reports.iterdir()) == []  # not even the lock: root writes nothing there


@pytest.mark.parametrize(
    "whose", [pytest.param("another user's", marks=_AS_ROOT), "writable by others"]
)
async def test_resume_refuses_a_run_directory_that_is_not_the_users_alone(
    tmp_path: Path, whose: str
) -> None:
    _inventory, source = inventory_file(tmp_path, 30, 1, seed=73)
    reports = tmp_path / "r"
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        args = ["run", str(source), "--endpoint", emulator.url]
        first = await run_cli(args, reports)
        run_dir = first.run_dir
        if whose == "another user's":
            os.chown(run_dir, NOBODY, NOBODY)
            says = f"run directory {run_dir} belongs to another user (uid {NOBODY})"
        else:
            run_dir.chmod(0o702)
            says = f"run directory {run_dir} may be written by others (mode drwx----w-)"
        files = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        sent = emulator.stats.requests
        done = await run_cli([*args, "--resume", str(run_dir)], reports)
        assert emulator.stats.requests == sent
    assert done.code == 2, done.stderr
    assert says in done.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == files


async def test_two_resumes_of_one_run_directory_never_both_run(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 30, 1, seed=69)
    first = await run_cli(["run", str(source), "--emulator"], tmp_path / "a")
    with RunLock(first.run_dir / ".lock"):
        done = await run_cli(
            ["run", str(source), "--emulator", "--resume", str(first.run_dir)], tmp_path / "b"
        )
    assert done.code == 75, done.stderr


# -- every answer bounded ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["huge", "bomb"])
async def test_answers_too_large_to_be_this_api_are_never_held(tmp_path: Path, kind: str) -> None:
    huge = b'{"members": [' + b'{"host":"10.0.0.1","id":"x"},' * 3_000_000 + b"{}]}"
    bomb = gzip.compress(b" " * 1_500_000_000, compresslevel=9)

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if kind == "huge":
            return web.Response(body=huge, status=201, content_type="application/json")
        return web.Response(
            body=bomb,
            status=201,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    runner, url = await serve(answer)
    _inventory, source = inventory_file(tmp_path, 200, 2, seed=70)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            str(source),
            "--endpoint",
            url,
            "--reports-dir",
            str(tmp_path / "r"),
            "--log-format",
            "json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
            # An answer held whole would need gigabytes: the run must live in 1 GB.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
        )
        _stdout, stderr = await process.communicate()
    finally:
        await runner.cleanup()
    assert process.returncode == 3, stderr.decode()
    assert b"8,388,608 bytes" in stderr


# -- flags and endpoints checked before anything is sent ----------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--rate", "nan"],
        ["--rate", "inf"],
        ["--rate", "1e-9"],
        ["--timeout", "inf"],
        ["--timeout", "-1"],
        ["--connect-timeout", "nan"],
        ["--max-body-bytes", "0"],
        ["--concurrency", "0"],
        ["--drain-timeout", "1e999"],
        ["--endpoint", "apig.example.com"],
        ["--endpoint", "ftp://127.0.0.1"],
        ["--endpoint", "http://example.com"],
    ],
)
async def test_flags_out_of_range_are_refused_before_anything_is_sent(
    tmp_path: Path, flags: list[str]
) -> None:
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=71)
    argv = ["run", str(source), *flags]
    if "--endpoint" not in flags:
        argv += ["--endpoint", "http://127.0.0.1:1"]
    done = await run_cli(argv, tmp_path / "r")
    assert done.code == 2, done.stderr
    assert flags[0] in done.stderr or "clear text" in done.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").glob("2*"))


def test_plain_http_beyond_loopback_needs_allow_http_and_is_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import structlog

    from worker.config import Config
    from worker.runner import ConfigError, Run

    structlog.configure(logger_factory=structlog.PrintLoggerFactory())
    config = Config(inputs=("x.csv",), endpoint="http://10.255.255.1")
    with pytest.raises(ConfigError, match="--allow-http"):
        Run(config)._endpoint()
    assert Run(config.replace(allow_http=True))._endpoint() == "http://10.255.255.1"
    assert "plain_http" in capsys.readouterr().out
    loopback = Config(inputs=("x.csv",), endpoint="http://127.0.0.1:8080")
    assert Run(loopback)._endpoint() == "http://127.0.0.1:8080"


async def test_a_formula_in_a_column_name_is_neutralised_in_both_reports(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,=evilcol\n"
        "p,i,c,10.0.0.1,x\n"
        "p,i,c,10.0.0.300,y\n"
    )
    done = await run_cli(["run", str(source), "--emulator"], tmp_path / "r")
    for name in ("succeeded.csv", "errors.csv"):
        header = (done.run_dir / name).read_text().splitlines()[0]
        assert header.endswith(",'=evilcol") and ",=evilcol" not in header
