"""``vpc-members emulator`` as a real process: listen line, a request, SIGTERM, the dump."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from yarl import URL

from worker import signing
from worker.cli import build_parser
from worker.emulator.cli import DESCRIPTION, config_from_args
from worker.emulator.iam import IamUser

WORKER = [sys.executable, "-m", "worker", "emulator"]


async def test_serves_until_sigterm_then_exits_0_and_writes_the_dump(tmp_path: Path) -> None:
    fixture = tmp_path / "channels.json"
    fixture.write_bytes(
        orjson.dumps(
            {
                "channels": [
                    {"project_id": "p1", "instance_id": "i1", "vpc_channel_id": "c1", "port": 8443}
                ]
            }
        )
    )
    dump = tmp_path / "state.json"
    process = await asyncio.create_subprocess_exec(
        *WORKER, "--port", "0", "--channels", str(fixture), "--token", "t1", "--dump", str(dump),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        members = f"{url}/v2/p1/apigw/instances/i1/vpc-channels/c1/members"
        body = {"members": [{"host": "10.0.0.1"}]}
        async with (
            aiohttp.ClientSession(headers={"X-Auth-Token": "t1"}) as session,
            session.post(members, json=body) as response,
        ):
            assert response.status == 201
            assert (await response.json())["members"][0]["port"] == 8443
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert b"t1" not in stderr  # tokens never reach the logs
    state = orjson.loads(dump.read_bytes())
    assert state["channels"][0]["members"][0]["host"] == "10.0.0.1"
    # Off a terminal, its log is JSON lines, as the worker's is.
    events = [orjson.loads(line)["event"] for line in stderr.splitlines()]
    assert events[0] == "emulator_started" and {"emulator_stopped", "emulator_dumped"} <= {*events}


@pytest.mark.parametrize("level", ["info", "warning"])
async def test_the_log_format_and_level_are_the_workers_options(level: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *WORKER, "--port", "0", "--log-format", "console", "--log-level", level,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        await asyncio.wait_for(process.stdout.readline(), 30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    text = stderr.decode()
    if level == "info":  # lines for people, not JSON
        assert "emulator_started" in text and not text.lstrip().startswith("{")
    else:
        assert "emulator_started" not in text


def test_help_teaches_with_examples() -> None:
    result = subprocess.run([*WORKER, "--help"], capture_output=True, text=True, check=True)
    assert "examples:" in result.stdout and "--fail-after-commit-rate" in result.stdout
    for flag in ("--aksk", "--iam-user", "--token-ttl", "--concurrent-write-conflicts"):
        assert flag in result.stdout
    assert "examples:" in DESCRIPTION


def test_a_bad_fixture_exits_2_with_a_reason(tmp_path: Path) -> None:
    fixture = tmp_path / "channels.json"
    fixture.write_text('{"channels": [{"project_id": "p"}]}')
    result = subprocess.run(
        [*WORKER, "--channels", str(fixture)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "instance_id" in result.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--fail-rate", "2"], "--fail-rate must be a probability in [0, 1], got 2.0"),
        (["--latency-ms", "-1"], "--latency-ms must not be negative"),
    ],
)
def test_a_bad_flag_value_is_named_by_its_flag(argv: list[str], says: str) -> None:
    result = subprocess.run([*WORKER, *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr


def test_the_credential_and_bound_flags_reach_the_config() -> None:
    args = build_parser("emulator").parse_args(
        ["emulator", "--aksk", "AK1:s:k1", "--aksk", "AK2:sk2", "--iam-user", "acme/ops:p/w:d",
         "--token-ttl", "90.5", "--concurrent-write-conflicts", "--body-budget-mb", "16"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.aksk == (("AK1", "s:k1"), ("AK2", "sk2"))
    assert config.iam_users == (IamUser("acme", "ops", "p/w:d"),)
    assert (config.token_ttl, config.concurrent_write_conflicts) == (90.5, True)
    assert config.body_budget_mb == 16
    defaults = config_from_args(build_parser("emulator").parse_args(["emulator"]))
    assert (defaults.aksk, defaults.iam_users, defaults.token_ttl) == ((), (), 86_400.0)
    assert (defaults.concurrent_write_conflicts, defaults.body_budget_mb) == (False, 64)


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--aksk", "AKONLY-secretpart"], "an AK/SK pair is AK:SK"),
        (["--aksk", ":secretpart"], "an AK/SK pair is AK:SK"),
        (["--iam-user", "ops:secretpart"], "an IAM user is DOMAIN/USER:PASSWORD"),
        (["--body-budget-mb", "5"], "--body-budget-mb must be at least 12"),
        (["--token-ttl", "0"], "--token-ttl must be a positive number"),
    ],
)
def test_bad_credential_flags_exit_2_without_echoing_the_secret(
    flags: list[str], reason: str
) -> None:
    result = subprocess.run([*WORKER, *flags], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert reason in result.stderr and "secretpart" not in result.stderr


async def test_a_process_serves_signed_requests_and_iam_logins(tmp_path: Path) -> None:
    secrets = ("sk-cli-0123456789", "pw-cli-0123456789")
    process = await asyncio.create_subprocess_exec(
        *WORKER, "--port", "0", "--auto-create", "--aksk", f"AKCLI:{secrets[0]}",
        "--iam-user", f"acme/ops:{secrets[1]}", "--token-ttl", "90.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()[-1]
        path = "/v2/p1/apic/instances/i1/vpc-channels/c1/members"
        body = orjson.dumps({"members": [{"host": "10.0.0.1"}]})
        headers = {"Content-Type": "application/json"}
        signed = signing.sign(
            ak="AKCLI", sk=secrets[0], method="POST", host=url.removeprefix("http://"),
            path=path, query=[], headers=headers, body=body, date=datetime.now(UTC),
        )  # fmt: skip
        user = {"domain": {"name": "acme"}, "name": "ops", "password": secrets[1]}
        login = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}}}}
        async with aiohttp.ClientSession() as session:
            async with session.post(URL(url + path), data=body, headers={**headers, **signed}) as r:
                assert r.status == 201
            async with session.post(f"{url}/v3/auth/tokens", json=login) as r:
                assert r.status == 201
                token = r.headers["X-Subject-Token"]
                lifetime = (await r.json())["token"]
            async with session.get(url + path, headers={"X-Auth-Token": token}) as r:
                assert r.status == 200 and (await r.json())["total"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    moments = [
        datetime.strptime(lifetime[k], "%Y-%m-%dT%H:%M:%S.%fZ") for k in ("issued_at", "expires_at")
    ]
    assert (moments[1] - moments[0]).total_seconds() == 90.5
    for secret in (*secrets, token):
        assert secret.encode() not in stderr
