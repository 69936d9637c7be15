"""What to send, decided without I/O: jobs, and the planners that make them.

A planner is fed the input's records and told how each job it made ended; in return it
gives the jobs to send next. It settles the rows it decides on itself (invalid, duplicate,
already right) through the ledger. :class:`Upserts` is ``run``'s planner: every valid
first-of-its-address row is posted. ``sync``'s planner, built on the same base, lives in
:mod:`worker.reconcile`. The driver (:mod:`worker.driver`) sends the jobs and consults
:mod:`worker.decisions`; it holds no rule of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Final, TypeVar, cast

from worker.batching import Batcher, Run
from worker.config import Api
from worker.intake import AlreadyLanded, Entry, FastEntry, Intake, OtherShard, Sendable
from worker.inventory import Record
from worker.ledger import Ledger
from worker.members import Channel
from worker.outcomes import Action, Outcome, Result
from worker.protocol import (
    Landed,
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

if TYPE_CHECKING:
    from worker.fastlane import Block


@dataclass(slots=True, eq=False)
class Post:
    """Add or update a batch of members of one channel. ``adds`` is False for a batch the
    diff knows holds only updates, which a full channel still takes."""

    channel: Channel
    entries: list[Sendable]
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

    @property
    def ecs(self) -> bool:
        """Whether it carries an ECS member (a fast row never is one)."""
        return any(
            type(entry) is Entry and entry.row.member is not None and bool(entry.row.member.ecs_id)
            for entry in self.entries
        )

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
    ecs: ClassVar[bool] = False
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
    ecs: ClassVar[bool] = False
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
T = TypeVar("T")
NOTHING: Final[Sequence[Job]] = ()


def with_attempts(result: Result, attempts: int) -> Result:
    """``result`` for a row (or removal) that made ``attempts`` requests. One never sent
    carries no request id: another request's would mislead a support case."""
    if attempts == 0 and result.request_id:
        return replace(result, attempts=0, request_id="")
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
        self.batcher: Batcher[Sendable] = Batcher(batch_size, max_body_bytes)
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
            return self._landed_before(outcome)
        if not isinstance(outcome, OtherShard):
            self._settled(*outcome)
        return NOTHING

    def feed_block(self, block: Block, start: int, stop: int) -> Sequence[Job]:
        """Rows (or places) ``start`` to ``stop`` of a block :mod:`worker.fastlane` decided:
        only ``run``'s planner takes them."""
        raise NotImplementedError

    def _landed_before(self, row: AlreadyLanded) -> Sequence[Job]:
        """A row an interrupted earlier run of this run directory landed."""
        self.ledger.landed_before()
        return NOTHING

    def _entry(self, entry: Sendable) -> Sequence[Job]:
        raise NotImplementedError

    def _settled(self, row: RowInfo, result: Result) -> None:
        """A row the intake decided on (invalid, duplicate)."""
        self.ledger.settle(row, result)

    def end_of_input(self, broken: str | None = None) -> Iterator[Sequence[Job]]:
        """The jobs the end of the input releases, in parts: the caller may yield to its
        event loop between parts (a sync diffs one channel a part). ``broken`` says where
        the input broke, when it did: the rows after that were never read."""
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

    def sending(self, job: Job) -> None:
        """``job`` goes out for the first time (a planner that journals its jobs writes
        so here)."""

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

    def settle_entries(self, entries: Iterable[Sendable], result: Result) -> None:
        for entry in entries:
            self.ledger.settle(entry.row, with_attempts(result, entry.attempts))

    def _landed(self, job: Post, answered: list[dict[str, object]] | list[Landed]) -> None:
        """Settle a post's rows from the 201 answer."""
        entries = job.entries
        if answered and isinstance(answered[0], Landed):
            if self._landed_plainly(entries, answered):
                return
            answered = [member.as_dict() for member in answered]
        answered = cast("list[dict[str, object]]", answered)
        settle = self.ledger.settle
        for entry, info in zip(entries, match([e.address for e in entries], answered), strict=True):
            if info is None:
                settle(entry.row, with_attempts(MISSING_FROM_ANSWER, entry.attempts))
            else:
                settle(entry.row, landed_result(info, entry.action, entry.attempts))
        self.ledger.flush()

    def _landed_plainly(self, entries: list[Sendable], answered: list[Landed]) -> bool:
        """Settle rows the fast lane accepted, when the answer names each, in the order
        sent, by the very address sent (canonical dotted quads, so ``match`` would pair
        them so too), and their report rows can be joined from cells: what most posts
        are. False, with nothing done, for any other."""
        if len(answered) != len(entries) or not all(type(e) is FastEntry for e in entries):
            return False
        if [member.host for member in answered] != [entry.address for entry in entries]:
            return False
        plain = cast("list[FastEntry]", entries)
        reports = self.ledger.reports
        assert reports is not None, "the fast lane sends only where reports take its rows"
        lines = reports.landed_lines(
            plain,
            [member.id for member in answered],
            [member.member_group_id for member in answered],
            [member.create_time for member in answered],
        )
        if lines is None:
            return False
        self.ledger.settle_landed(plain, lines)
        self.ledger.flush()
        return True


class Upserts(Planner):
    """``run``: post every valid first-of-its-address row, batched per channel."""

    def _entry(self, entry: Sendable) -> Sequence[Job]:
        batches = self.batcher.feed(entry.channel, entry, len(entry.body))
        return [Post(batch.channel, batch.items) for batch in batches]

    def end_of_input(self, broken: str | None = None) -> Iterator[Sequence[Job]]:
        yield [Post(batch.channel, batch.items) for batch in self.batcher.flush()]

    def feed_block(self, block: Block, start: int, stop: int) -> Sequence[Job]:
        """As :meth:`feed` would take the rows' records, one by one: a slow row, and a fast
        one that loses its dedupe, go to :meth:`feed` as the reference's Record. A block
        whose every address wins, and whose bodies only the count cap can batch, is taken
        a channel's run at a time (decided at its first part, for the whole block)."""
        if start == 0 and block.segments is not None:
            block.whole = _claim_whole(block, self.intake, self.batcher)
            if not block.whole:
                block.by_row()
        if block.whole:
            return self._runs(block, start, stop)
        entries = block.entries
        assert entries is not None, "a block to send has its entries"
        jobs: list[Job] = []
        fast, records, hosts = block.fast, block.records, block.hosts
        claim = self.intake.claim
        base = self.intake.ref_base(block.source)
        for i in range(start, stop):
            if fast is not None and not fast[i]:
                jobs += self.feed(records[i])
                continue
            entry = entries[i]
            assert entry is not None, "a fast row has its entry"
            if not claim(entry.channel, hosts[i], base | entry.line):
                jobs += self.feed(block.record(i))
                continue
            refusal = self.stopped or self.gone.get(entry.channel)
            if refusal is not None:
                self.ledger.settle(entry.row, refusal)
            else:
                jobs += self._entry(entry)
        return jobs

    def _runs(self, block: Block, start: int, stop: int) -> list[Job]:
        """Places ``start`` to ``stop`` of a block taken whole (see :func:`_claim_whole`)."""
        entries, segments, order = block.entries, block.segments, block.order
        assert entries is not None and segments is not None and order is not None
        runs: list[Run[Sendable]] = []
        for channel, first, last in segments:
            a, b = max(first, start), min(last, stop)
            if a >= b:
                continue
            # A block taken whole has every row fast, and so an entry at every place.
            run = cast("list[Sendable]", entries[a:b])
            refusal = self.stopped or self.gone.get(channel)
            if refusal is not None:
                self.settle_entries(run, refusal)
            else:
                runs.append(Run(channel, run, block.sizes[a:b], order[a:b]))
        return [Post(batch.channel, batch.items) for batch in self.batcher.feed_runs(runs)]


def _claim_whole(block: Block, intake: Intake, batcher: Batcher[T]) -> bool:
    """Whether a block of fast rows can be deduped and batched a channel's run at a time,
    claiming its addresses when it can: every address wins (none given twice in its
    channel's run, none claimed yet), and no body can be held back by the byte cap (so
    that batching is counting)."""
    segments, lines = block.segments, block.lines
    assert segments is not None and lines is not None
    if not batcher.by_count((c for c, _, _ in segments), block.largest):
        return False
    base = intake.ref_base(block.source)
    hosts = block.hosts
    return intake.claim_all(
        [
            (channel, hosts[a:b], lines[a:b] if not base else [base | n for n in lines[a:b]])
            for channel, a, b in segments
        ]
    )


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
    def members(self) -> int:
        return sum(plan.members for plan in self.channels.values())

    @property
    def rows(self) -> int:
        return sum(p.members + p.duplicates + p.invalid for p in self.channels.values())


def make_plan(
    items: Iterable[Record | Block], intake: Intake, batcher: Batcher[None], ledger: Ledger
) -> Plan:
    """Everything but posting: validate, dedupe and batch, settling invalid and duplicate rows.
    ``items`` are records, or blocks :mod:`worker.fastlane` decided.

    Members that would be sent are counted, not kept, so memory stays with the dedupe set.
    """
    plan = Plan()

    def take(record: Record) -> None:
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

    for item in items:
        if isinstance(item, Record):
            take(item)
        else:
            _plan_block(item, intake, batcher, plan, take)
    for batch in batcher.flush():
        plan.of(batch.channel).requests += 1
    return plan


def _plan_block(
    block: Block,
    intake: Intake,
    batcher: Batcher[None],
    plan: Plan,
    take: Callable[[Record], None],
) -> None:
    """A decided block's rows, as ``take`` would plan their records: the slow ones, and
    the fast ones that lose their dedupe, are taken as the reference's Records."""
    if block.segments is not None and block.order is not None:
        if _claim_whole(block, intake, batcher):
            runs: list[Run[None]] = []
            for channel, a, b in block.segments:
                plan.of(channel).members += b - a
                runs.append(Run(channel, [None] * (b - a), block.sizes[a:b], block.order[a:b]))
            for batch in batcher.feed_runs(runs):
                plan.of(batch.channel).requests += 1
            return
        block.by_row()
    base = intake.ref_base(block.source)
    first = block.first_line
    fast, channels, hosts, sizes = block.fast, block.channels, block.hosts, block.sizes
    claim = intake.claim
    feed = batcher.feed
    for i in range(block.count):
        if fast is not None and not fast[i]:
            take(block.records[i])
            continue
        channel = channels[i]
        if not claim(channel, hosts[i], base | (first + i)):
            take(block.record(i))
            continue
        counts = plan.of(channel)
        counts.members += 1
        done = feed(channel, None, sizes[i])
        if done:
            counts.requests += len(done)
