"""The driver: sends a planner's jobs under the limits and carries out the decisions.

It reads records into the planner, queues the jobs it gets back per channel, and runs
``concurrency`` workers in one :class:`asyncio.TaskGroup`: each takes a job, waits for its
slot in the rate limiter, sends it through the :class:`Exchange`, asks
:func:`worker.decisions.decide` what the verdict means, and carries that out. A failure of
any task (the reader included) cancels the others; every wait (a slot, a backoff, the drain
after a signal) gives way to a stop, and the drain is an :func:`asyncio.timeout` rescheduled
over the requests in flight. The driver holds no rule of its own: what to send is the
planner's, what an answer means is the decision table's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Final, Protocol

import structlog

from worker.config import Api, default
from worker.decisions import CREDENTIALS_TAKEN, Act, Action, Situation, decide
from worker.fastlane import Part
from worker.inventory import Record
from worker.ledger import Ledger
from worker.limits import ChannelQueues, OutOfReach, RateLimiter
from worker.outcomes import Outcome, RequestStats, Result, StopReason
from worker.planning import Job, Planner, Post
from worker.protocol import MAX_PAUSE, Kind, Request, Verdict

log = structlog.get_logger("vpc_members")

# Records are handed to the planner this many at a time between yields to the event loop
# (about 0.4 ms of work): a longer slice holds back requests whose slot has come, and they
# then reach the service in a clump.
READ_SLICE: Final = 32
# Seconds between looks at the pace achieved.
PACE_SAMPLE: Final = 1.0
# How a request sent but never answered, its answer cut short by the end of the drain, is
# counted in ``requests.by_status``.
IN_FLIGHT: Final = "in_flight"


class Exchange(Protocol):
    """The seam between the driver and HTTP: send one request, say what its answer means.

    ``send`` never raises for HTTP or transport trouble (a timeout, a reset, a refused
    connection, a bad certificate): the :class:`~worker.protocol.Verdict` says what
    happened. :class:`worker.client.MembersClient` implements it over aiohttp; tests can
    script any service with a few lines.
    """

    async def send(self, request: Request) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Options:
    """How the driver sends."""

    # The defaults are Config's (one source); an Api is immutable, so sharing one is safe.
    api: Api = default("api")  # noqa: RUF009
    concurrency: int = default("concurrency")
    per_channel_concurrency: int = default("per_channel_concurrency")
    max_attempts: int = default("max_attempts")
    drain_timeout: float = default("drain_timeout")
    # Send one request at a time until an answer shows the credentials taken (see
    # decisions.CREDENTIALS_TAKEN): for credentials the service locks after refusals.
    first_alone: bool = True
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_pause: float = MAX_PAUSE

    @property
    def max_pending(self) -> int:
        """Posts read ahead of sending: enough to keep every worker busy, no more."""
        return max(64, 4 * self.concurrency)


class Driver:
    """One run of a planner's jobs.

    After :meth:`run`: every row the planner was given is settled in ``ledger``;
    ``stop_reason`` says why the run stopped early (None when it did not); ``requests``
    counts what was sent.
    """

    def __init__(
        self,
        planner: Planner,
        exchange: Exchange,
        limiter: RateLimiter,
        ledger: Ledger,
        options: Options,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.planner = planner
        self.exchange = exchange
        self.limiter = limiter
        self.ledger = ledger
        self.options = options
        self.requests = RequestStats()
        self.rows_read = 0
        self.stop_reason: StopReason | None = None
        self.stop_result: Result | None = None
        self._rng = rng or random.Random()
        # Only posts hold rows: reads and deletes queue freely, so a sync's list requests
        # all go out while the input is still being read.
        self._queues: ChannelQueues[Job] = ChannelQueues(
            options.per_channel_concurrency, weight=lambda job: isinstance(job, Post)
        )
        self._changed = asyncio.Event()
        # Every job done with and no input left: what ends the workers and the pace watch.
        self._finished = asyncio.Event()
        self._stopping = asyncio.Event()
        self._input_done = False
        self._scopes: set[asyncio.Timeout] = set()
        self._drain_deadline: float | None = None
        self._unanswered = 0
        self._ever_answered = False
        # One request at a time until an answer shows the credentials taken (see
        # decisions.CREDENTIALS_TAKEN), when the options ask for it.
        self._trusted = not options.first_alone
        self._first = asyncio.Lock()
        self._first_sent: float | None = None
        self._last_sent = 0.0
        self._periodic: list[tuple[float, Callable[[], None]]] = []

    # -- control -----------------------------------------------------------------------------

    def stop(self, reason: StopReason, result: Result) -> None:
        """Send nothing more; everything unsent settles as ``result``."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.stop_result = result
        for job in self._queues.drain():
            self._put_all(self.planner.settle(job, result))
        self.planner.stop(result)
        self._stopping.set()
        self._changed.set()

    def interrupt(self, reason: StopReason) -> None:
        """A signal: stop, and give requests in flight ``drain_timeout`` seconds to end."""
        self.stop(reason, Result(Outcome.ABORTED, error_code=reason, error_msg=f"run {reason}"))
        if self._drain_deadline is None:
            self._drain_deadline = asyncio.get_running_loop().time() + self.options.drain_timeout
            for scope in self._scopes:
                scope.reschedule(self._drain_deadline)

    def every(self, seconds: float, call: Callable[[], None]) -> None:
        """Have ``call`` called every ``seconds`` while :meth:`run` goes (ask before it
        starts): by a task of the run's own, so it ends with the run, and a ``call`` that
        fails stops the run."""
        self._periodic.append((seconds, call))

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the run stops (a signal, a stop reason): for inputs to stop waiting."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._scopes)

    # -- the run -----------------------------------------------------------------------------

    async def run(
        self,
        chunks: AsyncIterator[Sequence[Record] | Part],
        broken: Callable[[], str | None] = lambda: None,
    ) -> None:
        """Read every chunk of records, send every job, settle every row. ``broken`` says,
        once the chunks end, where the input broke if it did (they end there too)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._produce(chunks, broken), name="read")
                for number in range(self.options.concurrency):
                    tasks.create_task(self._work(), name=f"worker-{number}")
                tasks.create_task(self._watch_pace(), name="pace")
                for seconds, call in self._periodic:
                    tasks.create_task(self._call_every(seconds, call), name="every")
        finally:
            self.ledger.flush()

    async def _still_going(self, seconds: float) -> bool:
        """Wait ``seconds``: whether jobs are still left then (False as soon as not)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._finished.wait()
            return False
        return True

    async def _call_every(self, seconds: float, call: Callable[[], None]) -> None:
        while await self._still_going(seconds):
            call()

    async def _watch_pace(self) -> None:
        """Say once when the asked rate is out of this process's reach (see OutOfReach)."""
        limiter = self.limiter
        check = OutOfReach(limiter.rate, self.options.concurrency)
        clock = asyncio.get_running_loop().time
        while await self._still_going(PACE_SAMPLE):
            achieved = check.observe(
                clock(),
                time.process_time(),
                self.requests.sent,
                throttled=limiter.effective < limiter.rate,
                in_flight=self.in_flight,
                ended=self._input_done and not len(self._queues),
            )
            if achieved is not None:
                log.warning(
                    "rate_out_of_reach",
                    asked=limiter.rate,
                    achieved=round(achieved, 1),
                    limited_by="worker",
                    detail="the service answered without throttling and requests were free "
                    "to go, but this process, busy on its core, sent no faster",
                )

    async def _produce(
        self, chunks: AsyncIterator[Sequence[Record] | Part], broken: Callable[[], str | None]
    ) -> None:
        async for chunk in chunks:
            if isinstance(chunk, Part):
                self.rows_read += chunk.stop - chunk.start
                self._put_all(self.planner.feed_block(chunk.block, chunk.start, chunk.stop))
            else:
                for record in chunk:
                    self.rows_read += 1
                    self._put_all(self.planner.feed(record))
            while self._queues.load >= self.options.max_pending and self.stop_reason is None:
                await self._wait_for_change()
        for jobs in self.planner.end_of_input(broken()):
            self._put_all(jobs)
            # A sync diffs a channel a part: requests whose slot has come go out between.
            await asyncio.sleep(0)
        self._input_done = True
        self._changed.set()

    async def _wait_for_change(self) -> None:
        """Sleep until the queues, the input or the run's state change.

        Every waiter re-checks its own condition after waking; clearing right before
        waiting is safe because nothing can run between a waiter's check and its clear.
        """
        self._changed.clear()
        await self._changed.wait()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the run stops meanwhile."""
        if seconds > 0 and not self._stopping.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    def _put_all(self, jobs: Sequence[Job], *, first: bool = False) -> None:
        # Put at the front in reverse, so that the jobs keep their order there.
        for job in reversed(jobs) if first else jobs:
            refusal = self._refusal(job)
            if refusal is not None:
                self._put_all(self.planner.settle(job, refusal))
            else:
                self._queues.put(job.channel, job, first=first)
                # Wake the workers when there is work, not after every slice read.
                self._changed.set()

    def _refusal(self, job: Job) -> Result | None:
        """The result a job settles with unsent, when its run or channel has stopped."""
        planner = self.planner
        return (
            self.stop_result
            or planner.gone.get(job.channel)
            or (planner.full.get(job.channel) if job.adds else None)
        )

    async def _work(self) -> None:
        while True:
            taken = self._queues.take()
            if taken is None:
                if self._input_done and self._queues.in_flight == 0 and not len(self._queues):
                    self._finished.set()
                    return
                await self._wait_for_change()
                continue
            channel, job = taken
            try:
                await self._carry(job)
            finally:
                self._queues.release(channel)
                self._changed.set()

    # -- one job -----------------------------------------------------------------------------

    async def _carry(self, job: Job) -> None:
        """Send ``job`` until the decision table says it is done with."""
        request = job.request(self.options.api)
        while True:
            sent = await (
                self._attempt(job, request) if self._trusted else self._first_one(job, request)
            )
            if sent is None:  # the run stopped before it was sent
                self._abandon(job)
                return
            attempt, verdict = sent
            if verdict is None:  # the drain after a signal ran out with this request in flight
                self._abandon(job, in_flight=attempt)
                return
            self._observe(job, verdict, attempt)
            situation = Situation(
                job.op,
                attempt,
                self.options.max_attempts,
                job.size,
                self._unanswered,
                self._ever_answered,
                self.planner.deletes_pending(job.channel),
                job.ecs,
            )
            action = decide(verdict.kind, situation)
            if action.act is not Act.RETRY:
                self._carry_out(job, verdict, action)
                return
            log.info("request_retry", **_fields(job, verdict), attempt=attempt)
            await self._pause(self._backoff(attempt))

    async def _first_one(self, job: Job, request: Request) -> tuple[int, Verdict | None] | None:
        """:meth:`_attempt`, alone, while no answer has shown the credentials taken (see
        decisions.CREDENTIALS_TAKEN). Those that waited for it take their slots after it,
        so that the rate limiter spaces them as ever."""
        async with self._first:
            if not self._trusted:
                sent = await self._attempt(job, request)
                if sent is not None and sent[1] is not None and sent[1].kind in CREDENTIALS_TAKEN:
                    self._trusted = True
                return sent
        return await self._attempt(job, request)

    async def _attempt(self, job: Job, request: Request) -> tuple[int, Verdict | None] | None:
        """One sending of ``job`` in its slot: its attempt and verdict (None when the drain
        ran out with it in flight), or None when the run stopped before it was sent."""
        await self._pause(self.limiter.delay())
        # A pause the service asked for while this request waited for its slot holds it
        # too. Waited here, where a stop ends the wait, not in the send.
        while (held := self.limiter.held()) > 0 and self.stop_result is None:
            await self._pause(held)
        if self.stop_result is not None:
            return None
        attempt = job.tried()
        if attempt == 1:
            self.planner.sending(job)
            if self._stopping.is_set():  # its journal row could not be written
                return None
        return attempt, await self._send(request)

    def _abandon(self, job: Job, *, in_flight: int = 0) -> None:
        """The run stopped before ``job`` was done with: it settles as the stop says; with
        ``in_flight``, its attempt whose answer the stop did not wait for, which was sent
        (and counted so), so it may have applied."""
        result = self.stop_result
        assert result is not None
        if in_flight:
            self.requests.count(job.op, IN_FLIGHT, retry=in_flight > 1)
            result = replace(
                result,
                error_msg=f"{result.error_msg} with its request in flight: it may have applied",
            )
        self._put_all(self.planner.settle(job, result))

    async def _send(self, request: Request) -> Verdict | None:
        scope = asyncio.timeout_at(self._drain_deadline)
        try:
            async with scope:
                self._scopes.add(scope)
                try:
                    return await self.exchange.send(request)
                finally:
                    self._scopes.discard(scope)
        except TimeoutError:
            if scope.expired():
                return None
            raise

    def _observe(self, job: Job, verdict: Verdict, attempt: int) -> None:
        """What every answer tells the run: counts, reachability, the service's pace."""
        if verdict.refused_before:  # its first sending, refused with the old credentials
            self.requests.count(job.op, "401", retry=attempt > 1)
        self.requests.count(job.op, verdict.status_key, retry=attempt > 1)
        now = asyncio.get_running_loop().time()
        if self._first_sent is None:
            self._first_sent = now
        self._last_sent = now
        if verdict.answered:
            self._ever_answered = True
            self._unanswered = 0
        else:
            self._unanswered += 1
        pause = verdict.retry_after
        cap = self.options.max_pause
        if pause is not None and pause > cap:
            log.warning("retry_after_capped", asked=pause, cap=cap, **_fields(job, verdict))
            pause = cap
        if verdict.kind is Kind.THROTTLED:
            self.limiter.throttled(pause)
        elif pause:
            self.limiter.pause(pause)

    def _carry_out(self, job: Job, verdict: Verdict, action: Action) -> None:
        planner = self.planner
        channel = job.channel
        if action.act is Act.DONE:
            self._put_all(planner.done(job, verdict))
            return
        if action.act is Act.SPLIT:
            assert isinstance(job, Post), "only posts split"
            self.requests.split += 1
            self._put_all(job.halves(), first=True)
            return
        if action.act is Act.DEFER:
            log.info("channel_deletes_first", **_fields(job, verdict))
            self._put_all(planner.defer(job), first=True)
            return
        assert action.outcome is not None
        result = Result(
            action.outcome,
            error_code=verdict.code,
            error_msg=verdict.msg,
            http_status=verdict.status,
            request_id=verdict.request_id,
        )
        if action.act is Act.STOP_RUN:
            assert action.reason is not None
            log.error(action.reason, **_fields(job, verdict), error=verdict.msg)
            self._put_all(planner.settle(job, result))
            self.stop(action.reason, result)
            return
        if action.act is Act.SETTLE:
            log.warning(f"request_{action.outcome}", **_fields(job, verdict), size=job.size)
            self._put_all(planner.settle(job, result))
            return
        event = "channel_full" if action.act is Act.CHANNEL_FULL else "channel_refused"
        log.error(event, **_fields(job, verdict), error=verdict.msg)
        self._put_all(planner.settle(job, result))
        which = (lambda queued: queued.adds) if action.act is Act.CHANNEL_FULL else None
        for queued in self._queues.drop(channel, which):
            self._put_all(planner.settle(queued, result))
        if action.act is Act.CHANNEL_FULL:
            planner.channel_full(channel, result)
        else:
            planner.stop_channel(channel, result)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self.options.backoff_cap, self.options.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)

    def achieved_rate(self) -> float:
        """Requests per second between the first and the last request sent."""
        sent = self.requests.sent
        if self._first_sent is None or sent < 2 or self._last_sent <= self._first_sent:
            return float(sent)
        return (sent - 1) / (self._last_sent - self._first_sent)


def _fields(job: Job, verdict: Verdict) -> dict[str, object]:
    return {
        "op": job.op,
        "channel": str(job.channel),
        "status": verdict.status,
        "code": verdict.code,
        "request_id": verdict.request_id or None,
    }


async def inline_chunks(
    records: Iterable[Record], size: int = READ_SLICE
) -> AsyncIterator[list[Record]]:
    """Records in chunks of ``size``, yielding to the event loop between chunks."""
    for chunk in _chunked(records, size):
        yield chunk
        await asyncio.sleep(0)


_END: Final = object()
_FILLING: Final = object()


def _chunked(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk


# The name of ThreadedChunks' thread: the shell looks for it at exit.
INPUT_THREAD: Final = "input-reader"


class ThreadedChunks:
    """Records read by a thread of their own, for an input whose reads can block for as
    long as its writer likes (stdin): the event loop, and with it the pacer, timers and
    signals, never waits on them. About ``depth`` chunks at most wait to be taken.

    The thread is a daemon: a run that stops early leaves it blocked on its input, and it
    ends with the process. Exceptions raised by the records' iterator reach the taker.
    Once ``until`` is set (the run stopped), the records already read are taken, those of
    the chunk being filled too, and no more are waited for: a writer that never closes its
    end must not hold the run.
    """

    def __init__(
        self,
        records: Iterable[Record],
        size: int = 256,
        depth: int = 8,
        *,
        until: asyncio.Event | None = None,
    ) -> None:
        self._records: Iterable[Record] | None = records
        self._made: Iterable[Sequence[Record] | Part] = ()
        self._size = size
        self._until = until
        # What the thread has read, under the lock: the chunk being filled, and the chunks
        # ready (then _END, or the exception that ended the input). A record read is in
        # one of them until it is taken, so a taker that stops early misses none.
        self._lock = threading.Lock()
        self._filling: list[Record] = []
        self._ready: deque[object] = deque()
        self._room = threading.Semaphore(depth)
        self._arrived = asyncio.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, chunks: Iterable[Sequence[Record] | Part], depth: int) -> ThreadedChunks:
        """Chunks made by the thread as they come: the work of making them is done off
        the event loop too (the fast lane decides its blocks there)."""
        self = cls((), depth=depth)
        self._records = None
        self._made = chunks
        return self

    def __aiter__(self) -> ThreadedChunks:
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._read, args=(loop,), name=INPUT_THREAD, daemon=True
            )
            self._thread.start()
        return self

    async def __anext__(self) -> Sequence[Record] | Part:
        while True:
            with self._lock:
                if self._ready:
                    item = self._ready.popleft()
                    self._room.release()
                    break
                if self._until is not None and self._until.is_set():
                    item, self._filling = self._filling or _END, []
                    break
                # Cleared under the lock: a hand-over after this check sets it again.
                self._arrived.clear()
            await self._wait()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, list | Part)
        return item

    async def _wait(self) -> None:
        """Until the thread hands something over, or ``until`` is set."""
        if self._until is None:
            await self._arrived.wait()
            return
        waits = [asyncio.ensure_future(event.wait()) for event in (self._arrived, self._until)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        def hand(item: object = _FILLING) -> None:
            """Hand ``item`` over: by default the chunk being filled, if a taker that
            stopped has not taken its records meanwhile."""
            with self._lock:
                if item is _FILLING:
                    item, self._filling = self._filling, []
                    if not item:
                        return
                self._ready.append(item)
            # RuntimeError: the loop closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._arrived.set)
            self._room.acquire()

        end: object = _END
        try:
            if self._records is None:
                for chunk in self._made:
                    hand(chunk)
            else:
                for record in self._records:
                    with self._lock:
                        self._filling.append(record)
                        full = len(self._filling) >= self._size
                    if full:
                        hand()
                hand()
        except Exception as exc:  # handed to the event loop, which raises it
            end = exc
        hand(end)
