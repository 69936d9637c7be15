"""The driver in-process, through its seam: any service behaviour, scripted, no sockets."""

from __future__ import annotations

import asyncio
import csv
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from tests.inprocess import CHANNEL, Service, build, drive, records, row
from worker.decisions import UNREACHABLE_AFTER
from worker.driver import ThreadedChunks, inline_chunks
from worker.inventory import Record
from worker.ledger import Ledger, SettledTwice
from worker.outcomes import Outcome, Result, StopReason
from worker.protocol import Kind, Op, Request, Verdict, classify, unreachable
from worker.reports import RowInfo

ROWS = records(row("c1", f"10.0.{n // 250}.{n % 250 + 1}") for n in range(300))


async def test_every_row_lands_once_against_a_plain_service() -> None:
    ran = await drive(ROWS, Service(), concurrency=4)
    assert ran.ledger.tally[Outcome.SUCCEEDED] == ran.ledger.tally.total == 300
    assert len(ran.service.members(CHANNEL)) == 300
    assert ran.driver.stop_reason is None
    assert len(ran.service.requests) == 3  # batches of 100


@pytest.mark.parametrize(
    ("status", "content_type"),
    [
        (302, "text/html"),
        (200, "application/json"),
        (201, "text/html"),
        (204, ""),
        (404, "text/html"),
        (403, "text/html"),
        (400, "text/html"),
    ],
)
async def test_an_answer_the_api_never_gives_stops_the_run_and_blames_no_row(
    status: int, content_type: str
) -> None:
    def script(request: Request, n: int) -> Verdict:
        return classify(request.op, status, b"<html>login</html>", content_type=content_type)

    ran = await drive(ROWS, Service(script=script), concurrency=2)
    assert ran.driver.stop_reason is StopReason.UNEXPECTED_ANSWER
    tally = ran.ledger.tally
    assert tally[Outcome.ABORTED] == tally.total == 300
    assert tally[Outcome.REJECTED] == 0
    assert len(ran.service.requests) == 1  # the first goes alone


@dataclass
class _Watched(Service):
    """A service that notes when each request starts and ends."""

    events: list[tuple[str, int]] = field(default_factory=list)
    _now: int = 0
    peak: int = 0

    async def send(self, request: Request) -> Verdict:
        number = len(self.requests) + 1
        self.events.append(("start", number))
        self._now += 1
        self.peak = max(self.peak, self._now)
        try:
            return await super().send(request)
        finally:
            self._now -= 1
            self.events.append(("end", number))


SPREAD = records(row(f"c{n % 30}", f"10.1.{n // 250}.{n % 250 + 1}") for n in range(600))


async def test_refused_credentials_cost_one_request_however_many_workers_wait() -> None:
    """The service locks an AK/SK pair after more than five failures in a row: with eight
    workers, a wrong key used to be refused once per request in flight."""

    def refuse(request: Request, n: int) -> Verdict:
        body = b'{"error_code":"APIG.0301","error_msg":"verify aksk signature fail"}'
        return classify(request.op, 401, body)

    ran = await drive(SPREAD, _Watched(script=refuse, delay=0.01), concurrency=8)
    assert ran.driver.stop_reason is StopReason.AUTH_REFUSED
    assert len(ran.service.requests) == 1
    assert ran.ledger.tally[Outcome.ABORTED] == 600


async def test_credentials_no_lock_threatens_send_their_first_requests_together() -> None:
    """The gate is for credentials the service locks after refusals (AK/SK): a token's
    run costs no round trip waiting for its first answer."""
    service = _Watched(delay=0.01)
    ran = build(service, concurrency=8, first_alone=False)
    await ran.run(SPREAD)
    assert service.events[:2] == [("start", 1), ("start", 2)]
    assert ran.ledger.tally[Outcome.SUCCEEDED] == 600


async def test_a_stop_while_requests_wait_for_the_first_answer_sends_none_of_them() -> None:
    service = _Watched(delay=0.01)
    ran = build(service, concurrency=8)

    def stop_at_the_first(request: Request, n: int) -> Verdict | None:
        # An interrupt that lands as the first answer does: the requests waiting behind it
        # are abandoned, not sent because the answer took the credentials.
        ran.driver.stop(StopReason.TERMINATED, Result(Outcome.ABORTED, error_code="terminated"))
        return None

    service.script = stop_at_the_first
    await ran.run(SPREAD)
    assert len(service.requests) == 1
    assert ran.ledger.tally[Outcome.SUCCEEDED] + ran.ledger.tally[Outcome.ABORTED] == 600


async def test_once_an_answer_shows_the_credentials_taken_requests_go_out_together() -> None:
    ran = await drive(SPREAD, _Watched(delay=0.01), concurrency=8)
    service = ran.service
    assert isinstance(service, _Watched)
    assert service.events[:2] == [("start", 1), ("end", 1)]  # the first, alone
    assert service.peak > 4 and ran.ledger.tally[Outcome.SUCCEEDED] == 600


async def test_an_endpoint_that_never_answers_is_given_up_after_a_few_attempts() -> None:
    def script(request: Request, n: int) -> Verdict:
        return unreachable("ConnectionRefusedError: [Errno 111] Connection refused")

    many = records(row(f"c{n % 50}", f"10.0.{n // 250}.{n % 250 + 1}") for n in range(5000))
    ran = await drive(many, Service(script=script), concurrency=8, max_attempts=5)
    assert ran.driver.stop_reason is StopReason.UNREACHABLE
    assert ran.ledger.tally[Outcome.ABORTED] == 5000
    # Not 50 channels x 5 attempts: the first few in a row with nothing ever answered.
    assert len(ran.service.requests) < UNREACHABLE_AFTER + 8


async def test_no_answer_after_one_did_is_retried_not_taken_for_unreachable() -> None:
    def script(request: Request, n: int) -> Verdict | None:
        return unreachable("reset") if 2 <= n <= 6 else None

    ran = await drive(ROWS, Service(script=script), concurrency=1, max_attempts=10)
    assert ran.driver.stop_reason is None
    assert ran.ledger.tally[Outcome.SUCCEEDED] == 300


async def test_a_full_channel_takes_what_fits_then_refuses_the_rest_without_probing() -> None:
    service = Service()
    service.state.add_channel(CHANNEL, max_members=10)
    ran = await drive(ROWS, service, concurrency=1)
    tally = ran.ledger.tally
    assert (tally[Outcome.SUCCEEDED], tally[Outcome.REJECTED]) == (10, 290)
    # Halving finds the 10 that fit; the first lone member refused ends the probing.
    assert len(service.requests) <= 2 * 7 + 2
    assert ran.driver.requests.by_status["403"] >= 1


async def test_a_refused_channel_fails_its_rows_and_others_still_land() -> None:
    service = Service()
    service.state.auto_create = False
    service.state.add_channel(("p", "i", "c0"))
    rows = records(row(f"c{n % 2}", f"10.0.0.{n + 1}") for n in range(200))
    ran = await drive(rows, service, concurrency=2)
    tally = ran.ledger.tally
    assert (tally[Outcome.SUCCEEDED], tally[Outcome.FAILED]) == (100, 100)
    assert Counter(r.op for r in service.requests)[Op.POST] == 2


async def test_a_pause_asked_for_is_capped(capsys: pytest.CaptureFixture[str]) -> None:
    def script(request: Request, n: int) -> Verdict | None:
        if n == 1:
            return Verdict(Kind.THROTTLED, 429, "APIG.0308", "slow", retry_after=99_999_999)
        return None

    structlog.configure(logger_factory=structlog.PrintLoggerFactory())
    async with asyncio.timeout(30):  # a hang guard, not a measurement
        ran = await drive(ROWS, Service(script=script), concurrency=1, max_pause=0.05)
    assert ran.ledger.tally[Outcome.SUCCEEDED] == 300
    assert "retry_after_capped" in capsys.readouterr().out


async def test_a_periodic_call_goes_while_the_run_does_and_ends_with_it() -> None:
    ran = build(Service(), concurrency=1, rate=20)
    calls: list[int] = []
    ran.driver.every(0.01, lambda: calls.append(ran.ledger.tally.total))
    async with asyncio.timeout(30):  # a hang guard: a call outliving the run would hang it
        await ran.run(ROWS)
    assert calls, "never called"
    assert calls[0] < 300, "called only once the run was over"
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_periodic_call_that_fails_stops_the_run() -> None:
    def broken() -> None:
        raise RuntimeError("progress broke")

    ran = build(Service(), concurrency=1, rate=1)  # 300 rows: 2 s, were it not stopped
    ran.driver.every(0.01, broken)
    async with asyncio.timeout(30):
        with pytest.raises(ExceptionGroup) as raised:
            await ran.run(ROWS)
    assert raised.group_contains(RuntimeError, match="progress broke")
    assert ran.ledger.tally[Outcome.SUCCEEDED] < 300


async def test_an_interrupt_with_nothing_in_flight_ends_the_run_at_once() -> None:
    # At 0.05 requests a second the second request's slot is 20 s away; the interrupt
    # must not wait for it.
    service = Service()
    ran = build(service, concurrency=1, rate=0.05)
    task = asyncio.create_task(ran.run(ROWS))
    while ran.ledger.tally[Outcome.SUCCEEDED] < 100:
        await asyncio.sleep(0.01)
    ran.driver.interrupt(StopReason.INTERRUPTED)
    async with asyncio.timeout(10):  # a hang guard, not a measurement
        await task
    assert ran.driver.stop_reason is StopReason.INTERRUPTED
    assert ran.ledger.tally[Outcome.SUCCEEDED] == 100
    assert ran.ledger.tally[Outcome.ABORTED] == 200
    assert len(service.requests) == 1


async def test_a_pause_the_service_asked_for_holds_every_request_and_a_stop_ends_it() -> None:
    def script(request: Request, n: int) -> Verdict | None:
        if n == 1:
            return Verdict(Kind.THROTTLED, 429, "APIG.0308", "slow", retry_after=50)
        return None

    service = Service(script=script)
    ran = build(service, concurrency=2, rate=5)  # the second slot is 0.2 s after the first
    spread = records(row(f"c{n % 2}", f"10.0.0.{n // 2 + 1}") for n in range(200))
    task = asyncio.create_task(ran.run(spread))
    while not service.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # the second request's slot has come, inside the pause
    assert len(service.requests) == 1
    ran.driver.interrupt(StopReason.INTERRUPTED)
    # A hang guard, not a measurement: a request held in the send would keep the run for
    # the whole drain (30 s by default).
    async with asyncio.timeout(10):
        await task
    assert len(service.requests) == 1
    assert ran.ledger.tally[Outcome.ABORTED] == 200


@dataclass
class _SlowAfterFirst(Service):
    """Answers the first request at once, the others after 30 s."""

    async def send(self, request: Request) -> Verdict:
        verdict = await super().send(request)
        if len(self.requests) > 1:
            await asyncio.sleep(30.0)
        return verdict


async def test_the_drain_after_a_signal_is_bounded(tmp_path: Path) -> None:
    service = _SlowAfterFirst()
    ran = build(service, concurrency=3, drain_timeout=0.1, reports=tmp_path / "r")
    spread = records(row(f"c{n % 3}", f"10.0.0.{n // 3 + 1}") for n in range(300))
    task = asyncio.create_task(ran.run(spread))
    while len(service.requests) < 3:  # the first, answered, then two in flight
        await asyncio.sleep(0.01)
    ran.driver.interrupt(StopReason.TERMINATED)
    async with asyncio.timeout(10):  # a hang guard, not a measurement
        await task
    assert ran.driver.stop_reason is StopReason.TERMINATED
    assert ran.ledger.tally[Outcome.SUCCEEDED] == 100
    assert ran.ledger.tally[Outcome.ABORTED] == 200
    # The two the drain cut off were sent, and may have applied: so they are counted and
    # their rows say.
    assert ran.driver.requests.by_status == {"201": 1, "in_flight": 2}
    assert ran.driver.requests.sent == 3
    errors = list(csv.DictReader((tmp_path / "r" / "errors.csv").open()))
    assert {row["error_msg"] for row in errors} == {
        "run terminated with its request in flight: it may have applied"
    }


async def test_a_failed_read_cancels_the_workers_and_reaches_the_caller() -> None:
    def broken() -> object:
        yield from ROWS[:50]
        raise RuntimeError("the disk went away")

    ran = build(Service(delay=5), concurrency=4)
    with pytest.raises(ExceptionGroup) as raised:
        async with asyncio.timeout(10):  # a hang guard, not a measurement
            await ran.driver.run(inline_chunks(broken()))  # type: ignore[arg-type]
    assert raised.group_contains(RuntimeError, match="disk went away")


def test_a_row_settled_twice_is_a_bug_that_raises() -> None:
    ledger = Ledger(None)
    info = RowInfo("in.csv", 2, {})
    ledger.settle(info, Result(Outcome.SUCCEEDED))
    with pytest.raises(SettledTwice):
        ledger.settle(info, Result(Outcome.FAILED))
    assert ledger.tally.total == 1


async def test_a_stop_ends_the_wait_for_a_writer_that_never_writes_again() -> None:
    gate = threading.Event()

    def stalled_input() -> object:
        yield from (Record("-", line, {}) for line in range(2, 5))
        gate.wait(30)  # stdin whose writer keeps its end open and writes nothing

    stopped = asyncio.Event()
    chunks = aiter(ThreadedChunks(stalled_input(), size=2, until=stopped))  # type: ignore[arg-type]
    try:
        first = await anext(chunks)
        while not chunks._filling:  # line 4 read, its chunk not full: the writer stalls
            await asyncio.sleep(0.005)
        stopped.set()
        async with asyncio.timeout(10):  # a hang guard: without the stop, 30 s
            rest = [chunk async for chunk in chunks]
    finally:
        gate.set()
    # What was read is taken, the chunk being filled too; nothing more is waited for.
    assert [[r.line for r in chunk] for chunk in (first, *rest)] == [[2, 3], [4]]


async def test_records_read_by_a_thread_never_block_the_event_loop() -> None:
    gate = threading.Event()

    def slow_input() -> object:
        gate.wait(10)  # stdin with nothing written yet
        yield Record("-", 2, {})

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not gate.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    chunks = ThreadedChunks(slow_input())  # type: ignore[arg-type]
    async with asyncio.TaskGroup() as group:
        group.create_task(ticker())
        first = group.create_task(anext(aiter(chunks)))
        while ticks < 5:
            await asyncio.sleep(0.005)
        gate.set()
    assert [r.line for r in first.result()] == [2]
    assert ticks >= 5
