"""The members API client over loopback: what it tells the rate limiter of each request,
when it signs, and what it does with a refused token."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

from aiohttp import web
from yarl import URL

from tests.clirun import serve
from tests.inprocess import records, row
from worker.client import MembersClient
from worker.config import Api
from worker.credentials import AkSk, IamPassword, Token
from worker.driver import Driver, Options, inline_chunks
from worker.emulator import Emulator, EmulatorConfig
from worker.emulator.iam import IamUser
from worker.intake import Intake
from worker.ledger import Ledger
from worker.limits import RateLimiter
from worker.members import Channel
from worker.planning import Upserts
from worker.protocol import Kind, post_request

TOKEN = "demo-token"
AK, SK = "AKCLIENT000000000001", "SKclient-5d2a91-secret"
PASSWORD = "p@ss-client-secret"
CHANNEL = Channel("proj1", "inst1", "chan1")
BODY = b'{"members":[{"host":"10.0.0.1","port":80}]}'
REQUEST = post_request(Api.ROMA, CHANNEL, BODY)


class Pacer:
    """Holds every write for ``hold`` seconds, and notes when it let each one go."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.departures: list[float] = []

    async def departure(self) -> None:
        await asyncio.sleep(self.hold)
        self.departures.append(time.monotonic())


async def test_the_pacer_holds_the_write_itself() -> None:
    # The rate limiter counts what reaches the wire: the request must not arrive before
    # the pacer let it go, and must arrive right after.
    pacer = Pacer(hold=0.3)
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True, record_arrivals=True)
    async with (
        Emulator(config) as emulator,
        MembersClient(emulator.url, Token(TOKEN), pacer=pacer) as client,
    ):
        for _ in range(3):
            verdict = await client.send(REQUEST)
            assert verdict.kind is Kind.OK
        arrivals = list(emulator.arrivals or [])
    assert len(pacer.departures) == len(arrivals) == 3
    for departed, arrived in zip(pacer.departures, arrivals, strict=True):
        assert departed <= arrived


async def test_a_request_that_never_left_never_reached_the_pacer() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused before a byte is sent.
    pacer = Pacer()
    async with MembersClient(f"http://127.0.0.1:{port}", Token(TOKEN), pacer=pacer) as client:
        verdict = await client.send(REQUEST)
    assert verdict.kind is Kind.UNREACHABLE
    assert verdict.code == "connection_error"
    assert pacer.departures == []


# -- signing at release ---------------------------------------------------------------------


class Schedule(RateLimiter):
    """The run's rate limiter, noting when each slot it hands out comes due."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        self.due: list[datetime] = []

    def delay(self) -> float:
        wait = super().delay()
        self.due.append(datetime.now(UTC) + timedelta(seconds=wait))
        return wait


class Dated(AkSk):
    """Access keys that note the date of every signature they make."""

    def __init__(self) -> None:
        super().__init__(AK, SK)
        self.dates: list[datetime] = []

    async def authorise(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        await super().authorise(method, url, headers, body)
        date = datetime.strptime(headers["X-Sdk-Date"], "%Y%m%dT%H%M%SZ")
        self.dates.append(date.replace(tzinfo=UTC))


async def test_a_signature_is_dated_when_its_slot_comes_not_when_it_was_queued() -> None:
    # Five posts queued at once at 2 a second: the last waits two seconds in the schedule,
    # so a date taken when it was queued (or reused from an earlier request) would be at
    # least a second older than its slot. The service refuses a date 15 minutes off; the
    # order of date and slot is what a run of hours at a low rate depends on.
    limiter, credentials = Schedule(2.0), Dated()
    config = EmulatorConfig(tokens=(TOKEN,), aksk=((AK, SK),), auto_create=True)
    ledger = Ledger(None)
    planner = Upserts(Intake({}, frozenset()), ledger, 1, 1024 * 1024)
    rows = records(row("c1", f"10.0.0.{n}") for n in range(1, 6))
    async with (
        Emulator(config) as emulator,
        MembersClient(emulator.url, credentials, pacer=limiter) as client,
    ):
        driver = Driver(planner, client, limiter, ledger, Options(concurrency=1))
        try:
            await driver.run(inline_chunks(rows))
        finally:
            ledger.close()
        created = emulator.stats.members_created
    assert driver.stop_reason is None and created == 5  # every signature was accepted
    assert len(credentials.dates) == len(limiter.due) == 5
    assert limiter.due[-1] - limiter.due[0] >= timedelta(seconds=2)
    for date, due in zip(credentials.dates, limiter.due, strict=True):
        # X-Sdk-Date holds whole seconds; a millisecond allows for the clocks' resolution.
        assert date >= (due - timedelta(milliseconds=1)).replace(microsecond=0)


# -- a refused IAM token ---------------------------------------------------------------------


class Clock:
    """The worker's clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Holding:
    """A pacer that, once armed, holds the next write until ``go`` is set."""

    def __init__(self) -> None:
        self.armed = False
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def departure(self) -> None:
        if self.armed:
            self.armed = False
            self.held.set()
            await self.go.wait()


def _iam(emulator: Emulator, clock: Clock) -> IamPassword:
    return IamPassword(emulator.url, "acme", "ops", PASSWORD, project_name="r1", clock=clock)


IAM = EmulatorConfig(
    tokens=(TOKEN,), iam_users=(IamUser("acme", "ops", PASSWORD),), auto_create=True
)


async def test_a_refused_token_is_fetched_anew_only_when_it_is_not_brand_new() -> None:
    clock = Clock()
    async with Emulator(IAM) as emulator:
        async with MembersClient(emulator.url, _iam(emulator, clock)) as client:
            assert (await client.send(REQUEST)).kind is Kind.OK
            emulator.api.iam.revoke(lasting=True)
            # IAM issued the token half a second ago and the API refuses it: a new one
            # would be refused alike, so the 401 stands, with no login and no second try.
            clock.now += timedelta(milliseconds=500)
            fresh = await client.send(REQUEST)
            assert (emulator.stats.tokens_issued, emulator.stats.by_status[401]) == (1, 1)
            # Refused once it has served a while (revoked early): one login and one
            # retry, whose 401 is final.
            clock.now += timedelta(seconds=2)
            served = await client.send(REQUEST)
        stats = emulator.stats
    assert fresh.kind is Kind.AUTH_REFUSED and fresh.code == "APIG.1002"
    assert served.kind is Kind.AUTH_REFUSED and served.code == "APIG.1002"
    assert (stats.tokens_issued, stats.by_status[401]) == (2, 3)


async def test_a_request_refused_with_an_older_token_is_retried_with_the_current_one() -> None:
    clock, pacer = Clock(), Holding()
    async with Emulator(IAM) as emulator:
        async with MembersClient(emulator.url, _iam(emulator, clock), pacer=pacer) as client:
            assert (await client.send(REQUEST)).kind is Kind.OK
            pacer.armed = True
            held = asyncio.create_task(client.send(REQUEST))
            await pacer.held.wait()  # authorised with the first token, not yet written
            emulator.api.iam.revoke()
            clock.now += timedelta(seconds=2)
            renewed = await client.send(REQUEST)  # refused, a login, sent again: 201
            # Seconds after that login, the held request is refused for the first token:
            # the current one is newer, so it is sent again with it, and no login is made.
            clock.now += timedelta(seconds=2)
            pacer.go.set()
            late = await held
        stats = emulator.stats
    assert renewed.kind is Kind.OK and late.kind is Kind.OK
    assert (stats.tokens_issued, stats.by_status[401]) == (2, 2)


async def test_an_iam_answer_that_arrives_in_pieces_is_read_whole() -> None:
    body = b'{"token": {"expires_at": "2099-01-01T00:00:00.000000Z", "methods": ["password"]}}'
    asked: list[str] = []

    async def login(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Accept-Encoding", ""))
        answer = web.StreamResponse(status=201, headers={"X-Subject-Token": "MIIpieces"})
        answer.content_length = len(body)
        await answer.prepare(request)
        # IAM's answers run to kilobytes: they reach a client in more than one read.
        await answer.write(body[:20])
        await asyncio.sleep(0.05)
        await answer.write(body[20:])
        return answer

    runner, url = await serve(login)
    try:
        credentials = IamPassword(url, "acme", "ops", PASSWORD, project_name="r1")
        async with MembersClient(url, credentials):
            headers: dict[str, str] = {}
            await credentials.authorise("POST", URL(url), headers, b"")
    finally:
        await runner.cleanup()
    assert headers["X-Auth-Token"] == "MIIpieces"
    assert asked == ["identity"]
