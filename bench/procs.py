"""The processes a benchmark starts: the emulator, the worker's CLI and the peers.

Every process is measured the same way (wall time, and user+sys CPU and peak RSS from
``os.wait4``, which reports that child alone) and always stopped, whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN = "demo-token"
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"


@dataclass(frozen=True, slots=True)
class ProcessRun:
    """What one finished child cost. ``max_rss`` is in bytes."""

    returncode: int
    elapsed: float
    cpu: float
    max_rss: int
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class Emulator:
    url: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_emulator/stats")
        return result

    def arrivals(self) -> list[float]:
        return [float(t) for t in self.get("/_emulator/arrivals")["arrivals"]]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_process(argv: Sequence[str], *, timeout: float = 600.0) -> ProcessRun:
    """Run ``argv`` to its end (killed after ``timeout``) and measure it."""
    env = dict(os.environ, VPC_MEMBERS_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT)
        try:
            status, usage = _wait4(process.pid, started + timeout)
        except BaseException:
            process.kill()
            process.wait()
            raise
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcessRun(
            returncode=process.returncode,
            elapsed=elapsed,
            cpu=usage.ru_utime + usage.ru_stime,
            max_rss=usage.ru_maxrss * 1024,
            stdout=out.read(),
            stderr=err.read(),
        )


def _wait4(pid: int, deadline: float) -> tuple[int, Any]:
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.perf_counter() > deadline:
            raise TimeoutError(f"process {pid} still running at its deadline")
        time.sleep(0.01)


@contextmanager
def emulator(*flags: str) -> Iterator[Emulator]:
    """A ``vpc-members emulator`` on a free loopback port, auto-creating channels."""
    argv = python("-m", "worker", "emulator", "--host", "127.0.0.1", "--port", "0")
    argv += ["--auto-create", "--token", TOKEN, "--seed", "5", *flags]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield Emulator(line.removeprefix("listening on "), process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True, slots=True)
class CliRun:
    process: ProcessRun
    summary: dict[str, Any]


def run_cli(command: str, inputs: Sequence[Path], *options: str, timeout: float = 600.0) -> CliRun:
    """``vpc-members COMMAND INPUTS... OPTIONS`` as a user runs it, reports in a scratch
    directory; ``summary`` is the run's summary.json ({} for ``plan``)."""
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK, prefix="reports-") as reports:
        argv = python("-m", "worker", command, *map(str, inputs), *options)
        argv += ["--reports-dir", reports, "--log-format", "json", "--progress", "off"]
        process = run_process(argv, timeout=timeout)
        found = sorted(Path(reports).glob("*/summary.json"))
        summary = json.loads(found[-1].read_text()) if found else {}
    return CliRun(process, summary)


def run_peer(*args: str, timeout: float = 600.0) -> tuple[ProcessRun, dict[str, Any]]:
    """One of ``bench.peers``' clients; it prints its tallies as one JSON line."""
    process = run_process(python("-m", "bench.peers", *args), timeout=timeout)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"peer {args[0]} failed: {process.stderr[-2000:]}")
    return process, json.loads(lines[-1])
