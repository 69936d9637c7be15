"""What to send, decided without I/O: jobs, and the planners that make them.

A planner is fed the input's records and told how each job it made ended; in return it
gives the jobs to send next. It settles the rows it decides on itself (invalid, duplicate,
already right) through the ledger. :class:`Upserts` is ``run``'s planner: every valid
first-of-its-address row is posted. ``sync``'s planner, built on the same base, lives in
:mod:`worker.reconcile`. The driver (:mod:`worker.driver`) sends the jobs and consults
:mod:`worker.decisions`; it holds no rule of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final

from worker.batching import Batcher
from worker.config import Api
from worker.intake import AlreadyLanded, Entry, Intake, OtherShard
from worker.inventory import Record
from worker.ledger import Ledger
from worker.members import Channel
from worker.outcomes import Action, Outcome, Result
from worker.protocol import (
    Op,
    Request,
    Verdict,
    delete_request,
    encode_body,
    list_request,
    match,
    post_request,
)
from worker.reports import RowInfo


@dataclass(slots=True, eq=False)
class Post:
    """Add or update a batch of members of one channel. ``adds`` is False for a batch the
    diff knows holds only updates, which a full channel still takes."""

    channel: Channel
    entries: list[Entry]
    adds: bool = True
    op: ClassVar[Op] = Op.POST

    @property
    def size(self) -> int:
        return len(self.entries)

    def request(self, api: Api) -> Request:
        return post_request(api, self.channel, encode_body(entry.body for entry in self.entries))

    def tried(self) -> int:
        for entry in self.entries:
            entry.attempts += 1
        return self.entries[0].attempts

    def halves(self) -> tuple[Post, Post]:
        half = len(self.entries) // 2
        return (
            Post(self.channel, self.entries[:half], self.adds),
            Post(self.channel, self.entries[half:], self.adds),
        )


@dataclass(slots=True, eq=False)
class ListPage:
    """Read one page of a channel's live members."""

    channel: Channel
    offset: int
    attempts: int = 0
    adds: ClassVar[bool] = False
    size: ClassVar[int] = 1
    op: ClassVar[Op] = Op.LIST

    def request(self, api: Api) -> Request:
        return list_request(api, self.channel, self.offset)

    def tried(self) -> int:
        self.attempts += 1
        return self.attempts


@dataclass(slots=True, eq=False)
class Delete:
    """Remove one live member."""

    channel: Channel
    live: dict[str, object]
    attempts: int = 0
    adds: ClassVar[bool] = False
    size: ClassVar[int] = 1
    op: ClassVar[Op] = Op.DELETE

    @property
    def member_id(self) -> str:
        return str(self.live.get("id", ""))

    def request(self, api: Api) -> Request:
        return delete_request(api, self.channel, self.member_id)

    def tried(self) -> int:
        self.attempts += 1
        return self.attempts


Job = Post | ListPage | Delete
NOTHING: Final[Sequence[Job]] = ()


def with_attempts(result: Result, attempts: int) -> Result:
    return result if result.attempts == attempts else replace(result, attempts=attempts)


MISSING_FROM_ANSWER: Final = Result(
    Outcome.FAILED,
    error_code="missing_from_answer",
    error_msg="the 201 answer did not list this member",
    http_status=201,
)


class Planner:
    """The part every planner shares: rows in, settled or batched; channels that stopped.

    Subclasses implement :meth:`_entry` (a valid row to send), :meth:`end_of_input` and
    the ends of their own jobs. Every row a planner is given is settled exactly once: by
    the planner, or by a job it made.
    """

    def __init__(self, intake: Intake, ledger: Ledger, batch_size: int, max_body_bytes: int):
        self.intake = intake
        self.ledger = ledger
        self.batcher: Batcher[Entry] = Batcher(batch_size, max_body_bytes)
        self.stopped: Result | None = None
        # Channels every request to which is refused, and channels too full to add to.
        self.gone: dict[Channel, Result] = {}
        self.full: dict[Channel, Result] = {}

    # -- rows in ---------------------------------------------------------------------------

    def feed(self, record: Record) -> Sequence[Job]:
        outcome = self.intake.process(record)
        if isinstance(outcome, Entry):
            refusal = self.stopped or self.gone.get(outcome.channel)
            if refusal is not None:
                self.ledger.settle(outcome.row, refusal)
                return NOTHING
            return self._entry(outcome)
        if isinstance(outcome, AlreadyLanded):
            self._landed_before(outcome)
        elif not isinstance(outcome, OtherShard):
            self._settled(*outcome)
        return NOTHING

    def _landed_before(self, row: AlreadyLanded) -> None:
        """A row an interrupted earlier run of this run directory landed."""
        self.ledger.landed_before()

    def _entry(self, entry: Entry) -> Sequence[Job]:
        raise NotImplementedError

    def _settled(self, row: RowInfo, result: Result) -> None:
        """A row the intake decided on (invalid, duplicate)."""
        self.ledger.settle(row, result)

    def end_of_input(self) -> Iterator[Sequence[Job]]:
        """The jobs the end of the input releases, in parts: the caller may yield to its
        event loop between parts (a sync diffs one channel a part)."""
        raise NotImplementedError

    # -- jobs out, and how they ended --------------------------------------------------------

    def done(self, job: Job, verdict: Verdict) -> Sequence[Job]:
        """``job`` did what was wanted; the next jobs, if any."""
        if isinstance(job, Post):
            assert isinstance(verdict.payload, list)
            self._landed(job, verdict.payload)
            return self._posted(job)
        raise NotImplementedError(job.op)

    def settle(self, job: Job, result: Result) -> Sequence[Job]:
        """``job`` ended in ``result``, final for it alone; the next jobs, if any."""
        if isinstance(job, Post):
            self.settle_entries(job.entries, result)
            return self._posted(job)
        raise NotImplementedError(job.op)

    def _posted(self, job: Post) -> Sequence[Job]:
        """A post job ended, whichever way: what follows it (nothing, for ``run``)."""
        return NOTHING

    def defer(self, job: Job) -> Sequence[Job]:
        """``job`` must wait for the channel's deletions: those to send first."""
        raise NotImplementedError(job.op)

    def deletes_pending(self, channel: Channel) -> bool:
        return False

    def stop_channel(self, channel: Channel, result: Result) -> None:
        """Every request to ``channel`` is refused: rows of it held or still to come settle
        with ``result``."""
        self.gone.setdefault(channel, result)
        batch = self.batcher.take(channel)
        if batch is not None:
            self.settle_entries(batch.items, result)

    def channel_full(self, channel: Channel, result: Result) -> None:
        """``channel`` takes no more members: additions held or still to come settle with
        ``result`` (for ``run`` every post may add, so that is every row of the channel)."""
        self.full.setdefault(channel, result)
        self.stop_channel(channel, result)

    def stop(self, result: Result) -> None:
        """The run stops: rows held or still to come settle with ``result``."""
        if self.stopped is None:
            self.stopped = result
            for batch in self.batcher.flush():
                self.settle_entries(batch.items, result)

    # -- settling ----------------------------------------------------------------------------

    def settle_entries(self, entries: Iterable[Entry], result: Result) -> None:
        for entry in entries:
            self.ledger.settle(entry.row, with_attempts(result, entry.attempts))

    def _landed(self, job: Post, answered: list[dict[str, object]]) -> int:
        """Settle a post's rows from the 201 answer; returns how many the answer left out."""
        missing = 0
        settle = self.ledger.settle
        entries = job.entries
        for entry, info in zip(entries, match([e.address for e in entries], answered), strict=True):
            if info is None:
                missing += 1
                settle(entry.row, with_attempts(MISSING_FROM_ANSWER, entry.attempts))
            else:
                settle(entry.row, landed_result(info, entry.action, entry.attempts))
        self.ledger.flush()
        return missing


class Upserts(Planner):
    """``run``: post every valid first-of-its-address row, batched per channel."""

    def _entry(self, entry: Entry) -> Sequence[Job]:
        batches = self.batcher.feed(entry.channel, entry, len(entry.body))
        return [Post(batch.channel, batch.items) for batch in batches]

    def end_of_input(self) -> Iterator[Sequence[Job]]:
        yield [Post(batch.channel, batch.items) for batch in self.batcher.flush()]


def landed_result(info: Mapping[str, object], action: Action, attempts: int = 0) -> Result:
    """A landed row's result, from the member the service answered with (or listed)."""
    return Result(
        Outcome.SUCCEEDED,
        attempts=attempts,
        member_id=_text(info.get("id")),
        member_group_id=_text(info.get("member_group_id")),
        create_time=_text(info.get("create_time")),
        action=action,
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


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
            counts = plan.of(outcome.channel)
            counts.members += 1
            counts.requests += len(batcher.feed(outcome.channel, None, len(outcome.body)))
        elif isinstance(outcome, AlreadyLanded):
            ledger.landed_before()
        elif not isinstance(outcome, OtherShard):
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
