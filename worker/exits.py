"""Exit codes a scheduler can act on, and the one function that picks a run's. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from worker.outcomes import Outcome, StopReason, Tally


class ExitCode(IntEnum):
    """One code per situation an operator handles differently.

    0-7 are this tool's own; 70, 74 and 75 are the sysexits codes (EX_SOFTWARE, EX_IOERR,
    EX_TEMPFAIL); 130 and 143 are the shell's for SIGINT and SIGTERM.
    """

    OK = 0  # every row landed (or was a duplicate of one that did); sync: in sync
    ROWS_FAILED = 1  # valid rows did not land (rejected, failed, aborted), or a removal failed
    USAGE = 2  # a flag, the environment, a file or an input is wrong; nothing was sent
    STOPPED = 3  # nothing (more) could be sent: credentials, TLS, the endpoint, its answers
    INVALID_ROWS = 4  # every valid row landed; some input rows are invalid
    EMPTY_INPUT = 5  # the inputs hold no valid data row: none at all, or every one invalid
    PRUNE_GUARDED = 6  # sync: a guard kept a channel from being pruned
    CHANGES_PENDING = 7  # sync --dry-run: writes or removals are pending
    CRASH = 70  # a bug: the traceback is in the log
    REPORTS_UNWRITABLE = 74  # a report file could not be written; --resume finishes the run
    LOCKED = 75  # another run holds the lock; try again later
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


SIGNALLED = {
    StopReason.INTERRUPTED: ExitCode.INTERRUPTED,
    StopReason.TERMINATED: ExitCode.TERMINATED,
}


@dataclass(frozen=True, slots=True)
class Facts:
    """What the exit code depends on."""

    tally: Tally
    rows_read: int
    stop_reason: StopReason | None = None
    input_broken: bool = False
    reports_broken: bool = False
    guarded: int = 0  # channels a prune guard kept from being pruned
    pending_removals: int = 0  # dry run: live members that would be removed
    failed_removals: int = 0  # sync --prune: live members whose removal failed


# Most urgent first: a run in several situations at once exits with the first that applies.
URGENCY: Final = (
    ExitCode.INTERRUPTED,
    ExitCode.TERMINATED,
    ExitCode.CRASH,
    ExitCode.REPORTS_UNWRITABLE,
    ExitCode.STOPPED,
    ExitCode.USAGE,
    ExitCode.LOCKED,
    ExitCode.EMPTY_INPUT,
    ExitCode.ROWS_FAILED,
    ExitCode.PRUNE_GUARDED,
    ExitCode.CHANGES_PENDING,
    ExitCode.INVALID_ROWS,
    ExitCode.OK,
)


def most_urgent(codes: Iterable[ExitCode]) -> ExitCode:
    """The code that applies of several (a merge of shards, a run in two situations)."""
    found = set(codes)
    return next((code for code in URGENCY if code in found), ExitCode.OK)


def exit_code(facts: Facts) -> ExitCode:
    """The code of a run that ended."""
    tally = facts.tally
    reports_broken = facts.reports_broken or facts.stop_reason is StopReason.REPORTS_UNWRITABLE
    situations = {
        SIGNALLED.get(facts.stop_reason) if facts.stop_reason else None,
        ExitCode.REPORTS_UNWRITABLE if reports_broken else None,
        ExitCode.STOPPED if facts.stop_reason is not None else None,
        ExitCode.USAGE if facts.input_broken else None,
        # Every row invalid is an inventory gone wrong (a CSV read as NDJSON, columns
        # renamed), not a success with some bad rows: nothing was done.
        ExitCode.EMPTY_INPUT if tally[Outcome.INVALID] == facts.rows_read else None,
        ExitCode.ROWS_FAILED if not tally.valid_rows_landed or facts.failed_removals else None,
        ExitCode.PRUNE_GUARDED if facts.guarded else None,
        ExitCode.CHANGES_PENDING if tally[Outcome.PENDING] or facts.pending_removals else None,
        ExitCode.INVALID_ROWS if tally[Outcome.INVALID] else None,
    }
    return most_urgent(code for code in situations if code is not None)
