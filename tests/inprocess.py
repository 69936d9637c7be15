"""The core in-process: the driver's seam served by the emulator's own pure rules.

:class:`Service` implements :class:`worker.driver.Exchange` with no socket: it routes each
request to the emulator's pure state and body reader (the same rules the emulator serves
over HTTP) and classifies the answer as the client would. A ``script`` can answer any
request itself, to play a service that misbehaves in whatever way a test needs.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from worker.config import Api, Format
from worker.driver import Driver, Options, inline_chunks
from worker.emulator import errors, paging
from worker.emulator.body import BodyReader
from worker.emulator.errors import ApiError
from worker.emulator.state import EmulatorState, QuotaExceeded, UnknownChannel, UnknownInstance
from worker.intake import Intake
from worker.inventory import Record
from worker.ledger import Ledger
from worker.limits import RateLimiter
from worker.planning import Planner, Upserts
from worker.protocol import Request, Verdict, classify
from worker.reports import ReportsUnwritable, ReportWriter, _Table

Script = Callable[[Request, int], Verdict | None]


@dataclass
class Service:
    """A members service in memory. ``requests`` lists what was sent, in order."""

    state: EmulatorState = field(
        default_factory=lambda: EmulatorState(random.Random(1), auto_create=True)
    )
    script: Script | None = None
    requests: list[Request] = field(default_factory=list)
    delay: float = 0.0
    _reader: BodyReader = field(default_factory=BodyReader)

    async def send(self, request: Request) -> Verdict:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        if self.script is not None:
            scripted = self.script(request, len(self.requests))
            if scripted is not None:
                return scripted
        try:
            status, payload = self._answer(request)
        except ApiError as error:
            status, payload = error.status, error.body(f"req-{len(self.requests)}")
        body = orjson.dumps(payload) if payload is not None else b""
        return classify(request.op, status, body)

    def _answer(self, request: Request) -> tuple[int, object]:
        parts = request.path.split("/")
        project, instance, channel_id = parts[2], parts[5], parts[7]
        try:
            channel = self.state.channel((project, instance, channel_id))
        except UnknownInstance:
            raise errors.unknown_instance(instance) from None
        except UnknownChannel:
            raise errors.unknown_channel(channel_id) from None
        if request.method == "POST":
            entries = self._reader.parse(request.body)
            try:
                done = channel.upsert(entries, 1.7e9)
            except QuotaExceeded:
                raise errors.channel_full() from None
            size = len(done.members)
            return 201, {"total": size, "size": size, "members": done.members}
        if request.method == "GET":
            query = dict(request.query)
            offset, limit = paging.window(query.get("offset"), query.get("limit"))
            total, members = channel.page(offset, limit)
            return 200, {"total": total, "size": len(members), "members": members}
        if not channel.delete(parts[-1]):
            raise errors.unknown_member(parts[-1])
        return 204, None

    def members(self, key: tuple[str, str, str]) -> list[dict[str, object]]:
        return [dict(m) for m in self.state.channels[key]] if key in self.state.channels else []


def records(rows: Iterable[dict[str, object]], source: str = "in.csv") -> list[Record]:
    return [Record(source, line, dict(row)) for line, row in enumerate(rows, start=2)]


def row(channel: str, host: str, **fields: object) -> dict[str, object]:
    return {
        "project_id": "p",
        "instance_id": "i",
        "vpc_channel_id": channel,
        "host": host,
        **fields,
    }


CHANNEL = ("p", "i", "c1")


@dataclass
class Ran:
    driver: Driver
    ledger: Ledger
    service: Service

    async def run(self, rows: Sequence[Record]) -> Ran:
        try:
            await self.driver.run(inline_chunks(rows))
        finally:
            self.ledger.close()
        return self


def build(
    service: Service,
    *,
    planner: Callable[[Intake, Ledger], Planner] | None = None,
    rate: float = 10_000,
    reports: Path | None = None,
    landed: frozenset[int] = frozenset(),
    resume: bool = False,
    **options: object,
) -> Ran:
    """A driver of ``run``'s planner (or ``planner``) against ``service``; options are
    :class:`worker.driver.Options` fields. ``landed`` and ``resume``: as a resumed run of
    the ``reports`` directory."""
    writer = None
    if reports is not None:
        reports.mkdir(mode=0o700, exist_ok=True)
        writer = ReportWriter(reports, Format.CSV, [], extras=True, resume=resume)
    ledger = Ledger(writer)
    intake = Intake({}, landed)
    made = planner(intake, ledger) if planner else Upserts(intake, ledger, 100, 1024 * 1024)
    settings = {"api": Api.ROMA, "backoff_base": 0.001, "backoff_cap": 0.002, **options}
    driver = Driver(made, service, RateLimiter(rate), ledger, Options(**settings))  # type: ignore[arg-type]
    return Ran(driver, ledger, service)


async def drive(rows: Sequence[Record], service: Service, **settings: object) -> Ran:
    """Run ``rows`` through :func:`build`'s driver, in this event loop."""
    return await build(service, **settings).run(rows)  # type: ignore[arg-type]


def full_disk_for(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make every flush of the report file ``name`` fail as a full disk makes it."""
    flush = _Table.flush

    def full(table: _Table) -> None:
        if table.path.name == name:
            raise ReportsUnwritable(table.path, OSError(errno.ENOSPC, "No space left on device"))
        flush(table)

    monkeypatch.setattr(_Table, "flush", full)
