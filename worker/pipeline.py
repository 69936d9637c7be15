"""Orchestration: records in, batches out under the limits, one report row per input row.

The data flows one way: inventory -> intake (validate, dedupe) -> batcher -> channel queues
-> workers (limiter, client) -> verdicts -> ledger (reports and tally). Every row leaves
through :meth:`Ledger.settle` exactly once, which is what makes the outcome counts add up.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Final

import structlog

from worker.api import MembersClient
from worker.batching import Batch, Batcher
from worker.intake import AlreadyLanded, Entry, Intake
from worker.inventory import Record
from worker.limits import ChannelQueues, RateLimiter
from worker.members import Channel
from worker.outcomes import Outcome, RequestStats, Result, Tally
from worker.protocol import (
    Landed,
    Refused,
    Retry,
    Scope,
    encode_body,
    match,
    status_key,
    stop_reason,
)
from worker.reports import ReportWriter, RowInfo

log = structlog.get_logger("vpc_members")

# Yield to the event loop this often while reading (32 rows, about 0.4 ms): a longer slice
# holds back requests whose slot has come, and they then reach the service in a clump
# (at 1,000/s, 256-row slices put 115 arrivals in one 100 ms window; 32-row ones 104).
_READ_SLICE: Final = 32


@dataclass(frozen=True, slots=True)
class Options:
    """How a run batches and sends. Defaults are the CLI's."""

    batch_size: int = 100
    max_body_bytes: int = 1024 * 1024
    concurrency: int = 8
    per_channel_concurrency: int = 1
    max_attempts: int = 5
    drain_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    @property
    def max_pending(self) -> int:
        """Batches read ahead of sending: enough to keep every worker busy, no more."""
        return max(64, 4 * self.concurrency)


class Ledger:
    """Where every row is settled: its report row is written and its outcome counted."""

    __slots__ = ("reports", "tally")

    def __init__(self, reports: ReportWriter | None) -> None:
        self.reports = reports
        self.tally = Tally()

    def settle(self, row: RowInfo, result: Result) -> None:
        self.tally.add(result.outcome)
        if self.reports is not None:
            self.reports.write(row, result)

    def already_landed(self) -> None:
        self.tally.add(Outcome.SUCCEEDED)


@dataclass(slots=True)
class ChannelPlan:
    members: int = 0
    duplicates: int = 0
    invalid: int = 0
    requests: int = 0


@dataclass(slots=True)
class Plan:
    """What a run would do, per channel; invalid rows without a readable channel are under None."""

    channels: dict[Channel | None, ChannelPlan] = field(default_factory=dict)

    def of(self, channel: Channel | None) -> ChannelPlan:
        plan = self.channels.get(channel)
        if plan is None:
            plan = self.channels[channel] = ChannelPlan()
        return plan

    @property
    def requests(self) -> int:
        return sum(plan.requests for plan in self.channels.values())

    @property
    def rows(self) -> int:
        return sum(p.members + p.duplicates + p.invalid for p in self.channels.values())


def make_plan(
    records: Iterable[Record], intake: Intake, batcher: Batcher[None], ledger: Ledger
) -> Plan:
    """Everything but posting: validate, dedupe and batch, settling invalid and duplicate rows.

    Members that would be sent are counted, not kept, so memory stays with the dedupe set.
    """
    plan = Plan()
    for record in records:
        outcome = intake.process(record)
        if isinstance(outcome, Entry):
            plan.of(outcome.channel).members += 1
            plan.of(outcome.channel).requests += len(
                batcher.feed(outcome.channel, None, len(outcome.body))
            )
        elif isinstance(outcome, AlreadyLanded):
            ledger.already_landed()
        else:
            row, result = outcome
            counts = plan.of(row.channel)
            if result.outcome is Outcome.DUPLICATE:
                counts.duplicates += 1
            else:
                counts.invalid += 1
            ledger.settle(row, result)
    for batch in batcher.flush():
        plan.of(batch.channel).requests += 1
    return plan


class Migration:
    """One run: reads records, posts their batches, settles every row.

    Parameters:
        options: batching, concurrency and retry settings.
        intake: validation and dedupe (shared with ``plan``, so both decide alike).
        ledger: where rows are settled.
        client: the open API client.
        limiter: the global rate limit every request passes, retries included.

    After :meth:`run`: ``ledger.tally`` accounts for every record read; ``stop_reason`` is
    None, ``"token_refused"`` (401), ``"certificate_refused"`` (the endpoint's TLS
    certificate failed verification), ``"interrupted"`` or ``"terminated"``.
    """

    def __init__(
        self,
        options: Options,
        intake: Intake,
        ledger: Ledger,
        client: MembersClient,
        limiter: RateLimiter,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.intake = intake
        self.ledger = ledger
        self.client = client
        self.limiter = limiter
        self.requests = RequestStats()
        self.rows_read = 0
        self.stop_reason: str | None = None
        self.stop_result: Result | None = None
        self._rng = rng or random.Random()
        self._batcher: Batcher[Entry] = Batcher(options.batch_size, options.max_body_bytes)
        self._queues: ChannelQueues[Batch[Entry]] = ChannelQueues(options.per_channel_concurrency)
        self._gone: dict[Channel, Result] = {}
        self._changed = asyncio.Event()
        self._input_done = False
        self._workers: list[asyncio.Task[None]] = []
        self._first_sent: float | None = None
        self._last_sent = 0.0

    # -- control -------------------------------------------------------------------------

    def stop(self, reason: str, result: Result) -> None:
        """Send nothing more; unsent members settle as ``result`` (aborted)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_result = result
            for batch in self._queues.drain():
                self._settle_batch(batch, result)
            self._changed.set()

    def interrupt(self, reason: str) -> None:
        """A signal: stop dispatching, give requests in flight ``drain_timeout`` to finish."""
        self.stop(reason, Result(Outcome.ABORTED, error_code=reason, error_msg=f"run {reason}"))
        asyncio.get_running_loop().call_later(self.options.drain_timeout, self._cancel_workers)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    # -- the run -------------------------------------------------------------------------

    async def run(self, records: Iterable[Record]) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"worker-{i}")
            for i in range(self.options.concurrency)
        ]
        try:
            await self._produce(records)
        finally:
            self._input_done = True
            self._changed.set()
            await asyncio.gather(*self._workers, return_exceptions=True)
            if self.ledger.reports is not None:
                self.ledger.reports.flush()

    async def _produce(self, records: Iterable[Record]) -> None:
        iterator = iter(records)
        while chunk := list(islice(iterator, _READ_SLICE)):
            for record in chunk:
                self._take(record)
            await asyncio.sleep(0)
            while len(self._queues) >= self.options.max_pending:
                await self._wait_for_change()
        for batch in self._batcher.flush():
            self._put(batch)
        self._changed.set()

    async def _wait_for_change(self) -> None:
        """Sleep until the queues, the input or the run's state change.

        Every waiter re-checks its own condition after waking; clearing right before
        waiting is safe because nothing can run between a waiter's check and its clear.
        """
        self._changed.clear()
        await self._changed.wait()

    def _take(self, record: Record) -> None:
        self.rows_read += 1
        outcome = self.intake.process(record)
        if isinstance(outcome, Entry):
            if self.stop_result is not None:
                self.ledger.settle(outcome.row, self.stop_result)
            elif outcome.channel in self._gone:
                self.ledger.settle(outcome.row, self._gone[outcome.channel])
            else:
                for batch in self._batcher.feed(outcome.channel, outcome, len(outcome.body)):
                    self._put(batch)
        elif isinstance(outcome, AlreadyLanded):
            self.ledger.already_landed()
        else:
            self.ledger.settle(*outcome)

    def _put(self, batch: Batch[Entry], *, first: bool = False) -> None:
        if self.stop_result is not None:
            self._settle_batch(batch, self.stop_result)
        elif batch.channel in self._gone:
            self._settle_batch(batch, self._gone[batch.channel])
        else:
            self._queues.put(batch.channel, batch, first=first)
            # Wake the workers when there is work, not after every slice read: that woke all
            # of them 35,000 times to send 600 batches.
            self._changed.set()

    async def _work(self) -> None:
        while True:
            taken = self._queues.take()
            if taken is None:
                if self._input_done and self._queues.in_flight == 0:
                    return
                await self._wait_for_change()
                continue
            channel, batch = taken
            try:
                await self._send(batch)
            except Exception:
                log.exception("batch_crashed", channel=str(channel))
            finally:
                self._queues.release(channel)
                self._changed.set()

    # -- one batch -----------------------------------------------------------------------

    async def _send(self, batch: Batch[Entry]) -> None:
        """Post one batch until it settles; whatever happens, its members settle once."""
        handled = False
        try:
            handled = await self._attempts(batch)
        finally:
            if not handled:
                self._settle_batch(batch, self.stop_result or _INTERNAL)

    async def _attempts(self, batch: Batch[Entry]) -> bool:
        entries = batch.items
        body = encode_body(entry.body for entry in entries)
        attempt = 0
        while True:
            await self.limiter.acquire()
            if self.stop_result is not None:
                return False
            attempt += 1
            for entry in entries:
                entry.attempts += 1
            self._mark_sent()
            verdict = await self.client.post(batch.channel, body)
            self.requests.count(status_key(verdict), retry=attempt > 1)
            if isinstance(verdict, Landed):
                self.limiter.succeeded()
                self._landed(batch, verdict)
                return True
            if isinstance(verdict, Refused):
                self._refused(batch, verdict)
                return True
            if verdict.status == 429:
                self.limiter.throttled(verdict.retry_after)
            elif verdict.retry_after:
                self.limiter.pause(verdict.retry_after)
            fields = {
                "channel": str(batch.channel),
                "status": verdict.status,
                "code": verdict.code,
                "attempt": attempt,
            }
            if attempt >= self.options.max_attempts:
                log.warning("batch_failed", members=len(entries), **fields)
                self._settle_batch(batch, _failed(verdict))
                return True
            log.info("batch_retry", **fields)
            await asyncio.sleep(self._backoff(attempt))

    def _mark_sent(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._first_sent is None:
            self._first_sent = now
        self._last_sent = now

    def achieved_rate(self) -> float:
        """Requests per second between the first and the last request sent."""
        sent = self.requests.sent
        if self._first_sent is None or sent < 2 or self._last_sent <= self._first_sent:
            return float(sent)
        return (sent - 1) / (self._last_sent - self._first_sent)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self.options.backoff_cap, self.options.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)

    def _landed(self, batch: Batch[Entry], verdict: Landed) -> None:
        answers = match([entry.address for entry in batch.items], verdict.members)
        missing = 0
        for entry, info in zip(batch.items, answers, strict=True):
            if info is None:
                missing += 1
                result = Result(
                    Outcome.FAILED,
                    error_code="missing_from_answer",
                    error_msg="the 201 answer did not list this member",
                    http_status=201,
                    attempts=entry.attempts,
                )
            else:
                result = Result(
                    Outcome.SUCCEEDED,
                    attempts=entry.attempts,
                    member_id=_text(info.get("id")),
                    member_group_id=_text(info.get("member_group_id")),
                    create_time=_text(info.get("create_time")),
                )
            self.ledger.settle(entry.row, result)
        if missing:
            log.warning("members_missing_from_answer", channel=str(batch.channel), count=missing)
        if self.ledger.reports is not None:
            self.ledger.reports.flush()

    def _refused(self, batch: Batch[Entry], verdict: Refused) -> None:
        """Settle a refused batch, or split it and requeue its halves when only some of its
        members can be at fault."""
        channel = batch.channel
        if verdict.scope is Scope.RUN:
            reason = stop_reason(verdict)
            log.error(reason, status=verdict.status, code=verdict.code, error=verdict.msg)
            result = Result(
                Outcome.ABORTED,
                error_code=verdict.code,
                error_msg=verdict.msg,
                http_status=verdict.status,
            )
            self._settle_batch(batch, result)
            self.stop(reason, result)
            return
        result = Result(
            Outcome.REJECTED if verdict.scope is Scope.BATCH else Outcome.FAILED,
            error_code=verdict.code,
            error_msg=verdict.msg,
            http_status=verdict.status,
        )
        if verdict.scope is Scope.CHANNEL:
            log.error(
                "channel_refused", channel=str(channel), status=verdict.status, code=verdict.code
            )
            self._gone[channel] = result
            self._settle_batch(batch, result)
            for queued in self._queues.drop(channel):
                self._settle_batch(queued, result)
            return
        if verdict.splittable and len(batch.items) > 1:
            half = len(batch.items) // 2
            self.requests.split += 1
            # Requeued at the front (second half first, so the first half leads); releasing
            # this batch wakes the workers that will take them.
            for part in (batch.items[half:], batch.items[:half]):
                self._put(Batch(channel, part), first=True)
            return
        log.warning(
            "batch_rejected",
            channel=str(channel),
            status=verdict.status,
            code=verdict.code,
            members=len(batch.items),
        )
        self._settle_batch(batch, result)

    def _settle_batch(self, batch: Batch[Entry], result: Result) -> None:
        for entry in batch.items:
            self.ledger.settle(entry.row, _with_attempts(result, entry.attempts))


_INTERNAL: Final = Result(
    Outcome.FAILED,
    error_code="internal_error",
    error_msg="the worker failed on this batch; see the log",
)


def _failed(verdict: Retry) -> Result:
    return Result(
        Outcome.FAILED,
        error_code=verdict.code,
        error_msg=verdict.msg,
        http_status=verdict.status,
    )


def _with_attempts(result: Result, attempts: int) -> Result:
    return result if result.attempts == attempts else replace(result, attempts=attempts)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
