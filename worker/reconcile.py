"""``sync``: make each channel the inventory names hold exactly its inventory. Sans I/O.

For each channel with a valid row, the planner reads the live members (pages of up to 500,
through the same rate limit as writes), waits for the whole input, and diffs
(:mod:`worker.diff`): members already right are settled ``unchanged`` without a request;
new and changed ones are posted (creates and updates in separate batches, so a full
channel still takes the updates); with ``prune``, the live members the inventory does not
name are deleted, one request each, after the channel's posts are done, so a channel never
drops below its target while it is rebuilt. When the channel refuses additions for quota,
its deletions go first and the refused additions follow.

Guards: a channel is not pruned when pruning would remove more than ``max_prune`` percent
of its live members (nor written: its creates and updates are held, pending), when any of
its rows is invalid or was refused, when its live state could not be read completely,
when an invalid row names no readable channel (it could belong to any), or when the
input broke before its end. Channels the inventory does not name are never read or
touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from worker.config import default
from worker.diff import Live, diff, kept
from worker.intake import AlreadyLanded, Entry, Intake, Sendable, member_body
from worker.ledger import Ledger
from worker.members import CHANNEL_FIELDS, Channel, Member
from worker.outcomes import Action, Fate, Outcome, Result
from worker.planning import (
    NOTHING,
    Delete,
    Job,
    ListPage,
    Planner,
    Post,
    landed_result,
    with_attempts,
)
from worker.protocol import Page, Verdict
from worker.reports import RowInfo

log = structlog.get_logger("vpc_members")

NOT_PRUNING: Final = Result(
    Outcome.SUCCEEDED, error_code="not_pruning", error_msg="--prune was not given"
)


@dataclass(slots=True)
class ChannelCounts:
    """What a sync did (or, in a dry run, would do) to one channel."""

    creates: int = 0
    updates: int = 0
    unchanged: int = 0
    removals: int = 0
    kept: int = 0
    live: int = 0
    guard: str = ""
    failed: str = ""  # what stopped the channel (an error code), when something did


# The row of a removal sent, until its answer's: what a kill -9 in between leaves.
_SENT: Final = Result(
    Outcome.ABORTED,
    error_code="removal_sent",
    error_msg="its removal was being sent when the run stopped; no answer was recorded",
    attempts=1,
)


class Sync(Planner):
    """The planner of ``sync`` (see the module's docstring).

    ``guarded`` counts the channels a guard kept from being pruned; ``pending_removals``
    the live members a dry run would remove; ``channels`` holds per-channel counts for the table.
    """

    def __init__(
        self,
        intake: Intake,
        ledger: Ledger,
        batch_size: int,
        max_body_bytes: int,
        *,
        prune: bool = default("prune"),
        max_prune: float = default("max_prune"),
        dry_run: bool = default("dry_run"),
    ) -> None:
        super().__init__(intake, ledger, batch_size, max_body_bytes)
        self.prune = prune
        self.max_prune = max_prune
        self.dry_run = dry_run
        self.guarded = 0
        self.pending_removals = 0
        self.channels: dict[Channel, ChannelCounts] = {}
        self._desired: dict[Channel, dict[str, Entry]] = {}
        self._named: dict[Channel, set[str]] = {}
        self._live: dict[Channel, list[Live]] = {}
        self._listed: set[Channel] = set()
        self._incomplete: set[Channel] = set()
        self._unprunable: dict[Channel, str] = {}
        # An invalid row with no readable channel could belong to any channel.
        self._blind = ""
        self._input_done = False
        # Where the input broke, if it did: the rows never read may name any live member.
        self._broken: str | None = None
        # Rows of a channel's posts not yet settled: counted in rows, not requests, since
        # the driver may split a post into halves that end one by one.
        self._unposted: dict[Channel, int] = {}
        self._held: dict[Channel, list[Delete]] = {}
        self._deletes_left: dict[Channel, int] = {}
        self._deferred: dict[Channel, list[Post]] = {}
        # Resumed: the first pass's removals sent but not known to have applied, by
        # channel (their rows still in the reports).
        self._unsure: dict[Channel, list[dict[str, object]]] = {}
        for row in ledger.reports.unsure_before if ledger.reports is not None else ():
            ids = (str(row.get(name) or "") for name in CHANNEL_FIELDS)
            self._unsure.setdefault(Channel(*ids), []).append(row)

    # -- rows in ----------------------------------------------------------------------------

    def _entry(self, entry: Sendable) -> Sequence[Job]:
        assert isinstance(entry, Entry), "a sync's rows take the reference lane"
        jobs = self._start(entry.channel)
        self._desired[entry.channel][entry.address] = entry
        return jobs

    def _landed_before(self, row: AlreadyLanded) -> Sequence[Job]:
        super()._landed_before(row)
        self._named.setdefault(row.channel, set()).add(row.address)
        # Listed all the same when every row of it landed before: the interrupted run
        # may not have removed all of its extras yet.
        if self.stopped is not None or row.channel in self.gone:
            return NOTHING
        return self._start(row.channel)

    def _start(self, channel: Channel) -> Sequence[Job]:
        """The first read of a channel's live members, the first time it is named."""
        if channel in self._desired:
            return NOTHING
        self._desired[channel] = {}
        self.channels[channel] = ChannelCounts()
        self._live[channel] = []
        return [ListPage(channel, 0)]

    def _settled(self, row: RowInfo, result: Result) -> None:
        if result.outcome is Outcome.INVALID:
            if row.channel is None:
                self._blind = (
                    self._blind or f"{row.source}:{row.line} is invalid and names no channel"
                )
            else:
                self._unprunable.setdefault(row.channel, f"{row.source}:{row.line} is invalid")
        super()._settled(row, result)

    def end_of_input(self, broken: str | None = None) -> Iterator[Sequence[Job]]:
        self._input_done = True
        self._broken = broken
        for channel in [c for c in self._unsure if c not in self.channels]:
            self._settle_unsure(channel)  # named by no row now: never listed
        for channel in list(self._listed):
            # Listed meanwhile and diffed already, or stopped: nothing more to do.
            if channel in self._listed:
                yield self._diff(channel)

    # -- jobs and how they ended --------------------------------------------------------------

    def done(self, job: Job, verdict: Verdict) -> Sequence[Job]:
        if isinstance(job, ListPage):
            return self._page(job, verdict.payload)
        if isinstance(job, Delete):
            self._extra(
                job.channel,
                job.live,
                Fate.REMOVED,
                Result(Outcome.SUCCEEDED, attempts=job.attempts),
            )
            # As a post's rows are once it is answered: a kill -9 must not take the row
            # of a removal done, which a resumed run could no longer find.
            self.ledger.flush()
            return self._deleted(job.channel)
        return super().done(job, verdict)

    def sending(self, job: Job) -> None:
        if isinstance(job, Delete):
            # Its row before its answer: a kill -9 while it is in flight leaves a row that
            # a resume settles by listing the channel (see _settle_unsure), not none.
            self.ledger.journal_extra(job.channel, job.live, Fate.KEPT, _SENT)

    def settle(self, job: Job, result: Result) -> Sequence[Job]:
        channel = job.channel
        if isinstance(job, ListPage):
            self._incomplete.add(channel)
            if self.prune and result.outcome is not Outcome.ABORTED:
                # Its extras are unknown, so none can be reported kept; the guard is said
                # all the same, as a resumed run has no row of it left to fail.
                self._keep_guarded(
                    channel, (), f"its live members could not be read ({result.error_code})"
                )
            self.stop_channel(channel, result)
            return NOTHING
        if isinstance(job, Delete):
            fate = Fate.KEPT if result.outcome is Outcome.ABORTED else Fate.FAILED
            self._extra(channel, job.live, fate, with_attempts(result, job.attempts))
            return self._deleted(channel)
        if result.outcome is not Outcome.SUCCEEDED:
            self._unprunable.setdefault(
                channel, f"a row was {result.outcome} ({result.error_code})"
            )
        return super().settle(job, result)

    def _page(self, job: ListPage, payload: object) -> Sequence[Job]:
        assert isinstance(payload, Page)
        channel = job.channel
        if channel in self.gone or self.stopped is not None:
            return NOTHING
        self._live[channel].extend(payload.members)
        offset = job.offset + len(payload.members)
        if payload.members and offset < payload.total:
            return [ListPage(channel, offset)]
        if offset < payload.total:
            # The service said there are more but gave none: the live state is not whole.
            self._incomplete.add(channel)
        self._listed.add(channel)
        return self._diff(channel) if self._input_done else NOTHING

    def _posted(self, job: Post) -> Sequence[Job]:
        channel = job.channel
        size = len(job.entries)
        left = self._unposted[channel] = self._unposted.get(channel, size) - size
        if left == 0 and channel in self._held:
            return self._release(channel)
        return NOTHING

    def _deleted(self, channel: Channel) -> Sequence[Job]:
        left = self._deletes_left[channel] = self._deletes_left[channel] - 1
        if left == 0:
            return self._deferred.pop(channel, [])
        return NOTHING

    def defer(self, job: Job) -> Sequence[Job]:
        assert isinstance(job, Post)
        self._deferred.setdefault(job.channel, []).append(job)
        return self._release(job.channel) if job.channel in self._held else NOTHING

    def deletes_pending(self, channel: Channel) -> bool:
        return channel in self._held or self._deletes_left.get(channel, 0) > 0

    # -- the diff ---------------------------------------------------------------------------------

    def _diff(self, channel: Channel) -> Sequence[Job]:
        wanted = self._desired.pop(channel)
        live = self._live.pop(channel)
        self._listed.discard(channel)
        self._settle_unsure(channel, live, whole=channel not in self._incomplete)
        counts = self.channels[channel]
        counts.live = len(live)
        found = diff(
            {address: _member(entry) for address, entry in wanted.items()},
            live,
            frozenset(self._named.pop(channel, ())),
        )
        for address, info in found.unchanged:
            counts.unchanged += 1
            self.ledger.settle(wanted[address].row, landed_result(info, Action.UNCHANGED))
        creates = [wanted[address] for address in found.creates]
        updates = [wanted[address] for address, _ in found.updates]
        counts.creates, counts.updates = len(creates), len(updates)
        share = self._share_guard(len(found.extras), counts.live) if self.prune else ""
        if share:
            # Its additions would make the share look smaller to the next run, which
            # would then prune what this one was kept from pruning: nothing is written.
            self._pending(creates, updates, "prune_guarded", f"not sent: {share}")
            self._keep_guarded(channel, found.extras, share)
            return NOTHING
        if not self.dry_run:
            for address, info in found.updates:
                entry = wanted[address]
                entry.body = member_body(kept(_member(entry), info))
        if self.dry_run:
            self._pending(creates, updates)
        else:
            for entry in creates:
                entry.action = Action.CREATED
            for entry in updates:
                entry.action = Action.UPDATED
        posts: list[Post] = []
        if not self.dry_run:
            posts.extend(self._batches(channel, creates, adds=True))
            posts.extend(self._batches(channel, updates, adds=False))
        self._unposted[channel] = sum(len(post.entries) for post in posts)
        self._plan_removals(channel, found.extras, counts)
        if not posts and channel in self._held:
            return self._release(channel)
        return posts

    def _pending(
        self, creates: list[Entry], updates: list[Entry], error_code: str = "", error_msg: str = ""
    ) -> None:
        """Settle rows that are not sent: a dry run's (where they would go), or a guarded
        channel's (with why)."""
        for entries, action in ((creates, Action.TO_CREATE), (updates, Action.TO_UPDATE)):
            pending = Result(
                Outcome.PENDING, error_code=error_code, error_msg=error_msg, action=action
            )
            for entry in entries:
                self.ledger.settle(entry.row, pending)

    def _batches(self, channel: Channel, entries: Iterable[Entry], *, adds: bool) -> list[Post]:
        batcher = self.batcher
        posts = [
            Post(batch.channel, batch.items, adds)
            for entry in entries
            for batch in batcher.feed(channel, entry, len(entry.body))
        ]
        last = batcher.take(channel)
        if last is not None:
            posts.append(Post(channel, last.items, adds))
        return posts

    def _plan_removals(self, channel: Channel, extras: list[Live], counts: ChannelCounts) -> None:
        if not extras:
            if self.prune and channel in self._incomplete:
                # The members the service left out may be extras: a guard all the same.
                self._keep_guarded(channel, (), self._guard(channel))
            return
        if not self.prune:
            counts.kept += len(extras)
            for info in extras:
                self._extra(channel, info, Fate.KEPT, NOT_PRUNING)
            return
        guard = self._guard(channel)
        if guard:
            self._keep_guarded(channel, extras, guard)
            return
        counts.removals += len(extras)
        if self.dry_run:
            self.pending_removals += len(extras)
            for info in extras:
                self._extra(channel, info, Fate.TO_REMOVE, Result(Outcome.PENDING))
            return
        self._held[channel] = [Delete(channel, dict(info)) for info in extras]

    def _guard(self, channel: Channel) -> str:
        """Why ``channel`` must not be pruned for what may name its live members, or ""
        when nothing may (the share its extras are is :meth:`_share_guard`'s)."""
        if channel in self._incomplete:
            return "its live members could not be read completely"
        if self._broken is not None:
            return f"the input broke ({self._broken}), and a row not read may name one of them"
        reason = self._unprunable.get(channel) or self._blind
        if reason:
            return f"{reason}, and such a row may name one of its live members"
        return ""

    def _share_guard(self, removals: int, live: int) -> str:
        """Why removing ``removals`` of a channel's ``live`` members would take too large a
        share of them, or "" when it would not."""
        share = 100.0 * removals / live if removals else 0.0
        if share > self.max_prune:
            return (
                f"pruning would remove {removals} of its {live} live members "
                f"({share:.0f}%), more than --max-prune {self.max_prune:g}%"
            )
        return ""

    def _release(self, channel: Channel) -> Sequence[Job]:
        """The channel's deletions, now that its posts are done (or its quota asks)."""
        deletes = self._held.pop(channel)
        reason = self._unprunable.get(channel) if channel not in self._deferred else None
        if reason:
            # A post was refused after the diff: that row may name a live member.
            self.channels[channel].removals -= len(deletes)
            self._keep_guarded(channel, [job.live for job in deletes], reason)
            return NOTHING
        self._deletes_left[channel] = len(deletes)
        return deletes

    def _keep_guarded(self, channel: Channel, extras: Sequence[Live], reason: str) -> None:
        """Keep ``extras`` of a channel a guard keeps from being pruned: counted, said once,
        and each reported kept with the reason."""
        counts = self.channels[channel]
        counts.guard = reason
        counts.kept += len(extras)
        self.guarded += 1
        log.warning("channel_not_pruned", channel=str(channel), reason=reason, extras=len(extras))
        kept = Result(Outcome.SUCCEEDED, error_code="prune_guarded", error_msg=reason)
        for info in extras:
            self._extra(channel, info, Fate.KEPT, kept)

    def _extra(self, channel: Channel, live: Live, fate: Fate, result: Result) -> None:
        self.ledger.settle_extra(channel, live, fate, result)

    # -- channels and runs that stop --------------------------------------------------------

    def stop_channel(self, channel: Channel, result: Result) -> None:
        super().stop_channel(channel, result)
        self._abandon(channel, result)

    def channel_full(self, channel: Channel, result: Result) -> None:
        # Updates still fit, and removals still free room: only additions stop.
        self.full.setdefault(channel, result)
        for job in self._deferred.pop(channel, []):
            self.settle_entries(job.entries, result)

    def stop(self, result: Result) -> None:
        super().stop(result)
        for channel in {*self._desired, *self._held, *self._deferred}:
            self._abandon(channel, result)

    def _settle_unsure(
        self, channel: Channel, live: Sequence[Live] = (), *, whole: bool = False
    ) -> None:
        """The first pass's removals of ``channel`` that were sent but not known to have
        applied, whose rows the reports still hold. One still in ``live``, the channel's
        listing, is an extra again, which the diff finds and reports. One gone from a
        ``whole`` listing did apply (its answer was lost to the stop, or said otherwise).
        Otherwise (no listing, or one the service left members out of) nothing is known:
        its row stays as it was. A row written now tells the member's fate in place of
        the older one (see :class:`worker.reports.ReportWriter`)."""
        listed = {info.get("id") for info in live}
        for row in self._unsure.pop(channel, []):
            if row.get("member_id") in listed:
                continue
            if not whole:
                self.ledger.extra_as_written(Fate(str(row["fate"])))
                continue
            removed = Result(
                Outcome.SUCCEEDED,
                error_code="applied_before",
                error_msg="gone when the resumed run listed the channel: the removal the run "
                "before sent had applied, though no answer said so (or someone else removed "
                "it meanwhile)",
                attempts=int(str(row["attempts"])),
            )
            self._extra(channel, {**row, "id": row.get("member_id")}, Fate.REMOVED, removed)

    def _abandon(self, channel: Channel, result: Result) -> None:
        """Settle whatever this planner still holds of ``channel``, which stopped."""
        counts = self.channels.get(channel)
        if counts is not None and not counts.failed:
            counts.failed = result.error_code or str(result.outcome)
        self._settle_unsure(channel)
        wanted = self._desired.pop(channel, None)
        if wanted is not None:
            self._live.pop(channel, None)
            self._listed.discard(channel)
            self.settle_entries(wanted.values(), result)
        fate = Fate.KEPT if result.outcome is Outcome.ABORTED else Fate.FAILED
        for job in self._held.pop(channel, []):  # never sent
            self._extra(channel, job.live, fate, with_attempts(result, 0))
        for post in self._deferred.pop(channel, []):
            self.settle_entries(post.entries, result)


def _member(entry: Entry) -> Member:
    member = entry.row.member
    assert member is not None, "an entry is a valid row"
    return member
