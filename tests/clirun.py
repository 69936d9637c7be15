"""Run the real CLI in a subprocess against an emulator over loopback, and read what it left."""

from __future__ import annotations

import asyncio
import csv
import os
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench import generate

TOKEN = "test-token-7f3a9c"


def inventory_file(
    directory: Path, count: int, channels: int, *, suffix: str = ".csv", **options: Any
) -> tuple[generate.Inventory, Path]:
    """A seeded inventory (see :func:`bench.generate.rows`) written to ``directory/in.csv``
    (or ``.ndjson``), with the outcome each row must end in."""
    inventory = generate.rows(count, channels, **options)
    path = directory / f"in{suffix}"
    write = generate.write_csv if suffix == ".csv" else generate.write_ndjson
    write(path, inventory.rows)
    return inventory, path


@dataclass(slots=True)
class Finished:
    code: int
    stdout: str
    stderr: str
    reports_dir: Path

    @property
    def run_dir(self) -> Path:
        runs = sorted(p for p in self.reports_dir.iterdir() if p.is_dir() and not p.is_symlink())
        assert runs, f"no run directory under {self.reports_dir}\n{self.stderr}"
        return runs[-1]

    @property
    def summary(self) -> dict[str, object]:
        data: dict[str, object] = orjson.loads((self.run_dir / "summary.json").read_bytes())
        return data

    def report(self, name: str) -> list[dict[str, str]]:
        path = self.run_dir / name
        if path.suffix == ".ndjson":
            return [orjson.loads(line) for line in path.read_bytes().splitlines()]
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))


def cli_env(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPC_MEMBERS_")}
    if token is not None:
        env["VPC_MEMBERS_TOKEN"] = token
    env.update(extra)
    return env


async def start_cli(
    args: Sequence[str],
    reports_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    file_limit: int | None = None,
) -> asyncio.subprocess.Process:
    """The CLI's ``args``, reports in ``reports_dir``; with ``file_limit``, no file it
    writes may pass that many bytes (a disk that fills up)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        "--reports-dir",
        str(reports_dir),
        "--log-format",
        "json",
        "--progress",
        "events",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env if env is not None else cli_env()),
        preexec_fn=None if file_limit is None else partial(_limit_file_size, file_limit),
    )


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


async def run_cli(
    args: Sequence[str],
    reports_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    file_limit: int | None = None,
) -> Finished:
    process = await start_cli(args, reports_dir, env, file_limit=file_limit)
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode(), reports_dir)


async def get_json(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        data: dict[str, object] = await response.json()
        return data


async def wait_for_landed_rows(reports: Path, at_least: int) -> Path:
    """The run directory under ``reports`` once its succeeded file has ``at_least`` rows."""
    for _ in range(600):
        await asyncio.sleep(0.05)
        for path in reports.glob("*/succeeded.csv"):
            if path.read_bytes().count(b"\n") > at_least:
                return path.parent
    raise AssertionError("the run never landed enough rows to interrupt")


async def run_bare(args: Sequence[str]) -> Finished:
    """Run the CLI with exactly ``args`` (a command that takes no reports directory)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    stdout, stderr = await process.communicate()
    return Finished(process.returncode or 0, stdout.decode(), stderr.decode(), Path("."))


async def serve(handler: Callable[[web.Request], object]) -> tuple[web.AppRunner, str]:
    """A server on loopback answering every request with ``handler``: its runner (to clean
    up) and its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
