"""``vpc-members emulator`` as a real process: listen line, a request, SIGTERM, the dump."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from worker.emulator.cli import DESCRIPTION

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


def test_help_teaches_with_examples() -> None:
    result = subprocess.run([*WORKER, "--help"], capture_output=True, text=True, check=True)
    assert "examples:" in result.stdout and "--fail-after-commit-rate" in result.stdout
    assert "examples:" in DESCRIPTION


def test_a_bad_fixture_exits_2_with_a_reason(tmp_path: Path) -> None:
    fixture = tmp_path / "channels.json"
    fixture.write_text('{"channels": [{"project_id": "p"}]}')
    result = subprocess.run(
        [*WORKER, "--channels", str(fixture)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "instance_id" in result.stderr
