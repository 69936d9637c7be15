"""Where every row is settled, exactly once: its report row written, its outcome counted."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from worker.members import Channel
from worker.outcomes import Fate, FateTally, Outcome, Result, Tally
from worker.reports import Plain, ReportsUnwritable, ReportWriter, RowInfo


class SettledTwice(RuntimeError):
    """A row was settled a second time: a bug, never a second count."""


class Ledger:
    """Settles rows and live members, and counts them.

    Parameters:
        reports: where report rows go (None: count only).
        on_broken: called once, with the error, when a report file cannot be written.

    Guarantees: a row is settled at most once (a second settle raises
    :class:`SettledTwice`); every settled row is counted in ``tally``. Once a report file
    cannot be written, ``broken`` holds the error and later rows are counted but no longer
    written: the report files hold whole rows only, and ``--resume`` sends again whatever
    has no row in them.
    """

    __slots__ = ("already_landed", "broken", "fates", "on_broken", "reports", "tally")

    def __init__(
        self,
        reports: ReportWriter | None,
        on_broken: Callable[[ReportsUnwritable], None] | None = None,
    ) -> None:
        self.reports = reports
        self.tally = Tally()
        self.fates = FateTally()
        # A resumed sync's removals made before the interruption, still in its reports.
        if reports is not None:
            self.fates.add(Fate.REMOVED, reports.removed_before)
        self.already_landed = 0
        self.broken: ReportsUnwritable | None = None
        self.on_broken = on_broken

    def settle(self, row: RowInfo, result: Result) -> None:
        if row.settled:
            raise SettledTwice(f"{row.source}:{row.line} settled twice (now {result.outcome})")
        row.settled = True
        self.tally.add(result.outcome, result.action)
        self._report(lambda reports: reports.write(row, result))

    def settle_landed(self, rows: Sequence[Plain], lines: str) -> None:
        """Settle rows that landed, of one action, whose report rows :func:`landed_lines`
        wrote out: as :meth:`settle` would, without a Result or RowInfo for each."""
        for row in rows:
            if row.settled:
                raise SettledTwice(f"a row landed as {row.head!r} settled twice")
            row.settled = True
        self.tally.add(Outcome.SUCCEEDED, rows[0].action, len(rows))
        self._report(lambda reports: reports.write_landed(lines, len(rows)))

    def landed_before(self) -> None:
        """A row an interrupted earlier run of this run directory landed (``--resume``)."""
        self.tally.add(Outcome.SUCCEEDED)
        self.already_landed += 1

    def settle_extra(
        self, channel: Channel, live: Mapping[str, object], fate: Fate, result: Result
    ) -> None:
        """A live member the inventory does not name (sync): each is settled once by the
        planner that holds it."""
        self.fates.add(fate)
        self._report(lambda reports: reports.write_extra(channel, live, fate, result))

    def extra_as_written(self, fate: Fate) -> None:
        """A live member an earlier run of this run directory reported (``--resume``),
        whose row, as it was written, stays."""
        self.fates.add(fate)

    def journal_extra(
        self, channel: Channel, live: Mapping[str, object], fate: Fate, result: Result
    ) -> None:
        """A row of a live member written, and flushed, ahead of its settling (a removal
        about to be sent): not counted, and replaced in the reports by the member's later
        row."""
        self._report(lambda reports: reports.write_extra(channel, live, fate, result, ahead=True))
        self.flush()

    def flush(self) -> None:
        self._report(ReportWriter.flush)

    def _report(self, write: Callable[[ReportWriter], None]) -> None:
        """``write`` to the reports, unless there are none or they broke: then the row is
        counted only (see the class)."""
        if self.reports is not None and self.broken is None:
            try:
                write(self.reports)
            except ReportsUnwritable as exc:
                self._break(exc)

    def close(self) -> None:
        """Write what is buffered and close the files (also after a failure: what can be
        written still is)."""
        if self.reports is None:
            return
        try:
            self.reports.close()
        except ReportsUnwritable as exc:
            self._break(exc)

    def _break(self, exc: ReportsUnwritable) -> None:
        if self.broken is None:
            self.broken = exc
            if self.on_broken is not None:
                self.on_broken(exc)
