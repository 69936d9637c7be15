"""The decision table, exhaustively: every kind of answer in every situation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.decisions import TABLE, UNREACHABLE_AFTER, Act, Situation, decide
from worker.exits import ExitCode, Facts, exit_code
from worker.outcomes import Outcome, StopReason, Tally
from worker.protocol import Kind, Op

SITUATIONS = st.builds(
    Situation,
    op=st.sampled_from(list(Op)),
    attempt=st.integers(1, 12),
    max_attempts=st.integers(1, 12),
    size=st.integers(1, 200),
    unanswered=st.integers(0, 10),
    ever_answered=st.booleans(),
    deletes_pending=st.booleans(),
)


def test_the_table_covers_every_kind() -> None:
    assert set(TABLE) == set(Kind)


@given(st.sampled_from(list(Kind)), SITUATIONS)
def test_every_decision_is_complete_and_consistent(kind: Kind, s: Situation) -> None:
    action = decide(kind, s)
    # Settling acts carry an outcome; a stop of the run also says why.
    assert (action.outcome is not None) == (
        action.act in (Act.SETTLE, Act.STOP_CHANNEL, Act.CHANNEL_FULL, Act.STOP_RUN)
    )
    assert (action.reason is not None) == (action.act is Act.STOP_RUN)
    if action.act is Act.STOP_RUN:
        assert action.outcome is Outcome.ABORTED
    # Never a retry past the last attempt; never a split of a lone member.
    if action.act is Act.RETRY:
        assert s.attempt < s.max_attempts
    if action.act is Act.SPLIT:
        assert s.size > 1
    # What may have applied, or not been sent, is never blamed on the rows.
    if kind in (Kind.THROTTLED, Kind.SERVER_ERROR, Kind.NO_ANSWER, Kind.UNREACHABLE):
        assert action.outcome in (None, Outcome.FAILED, Outcome.ABORTED)
    # An answer the API never gives stops the run: rows are aborted, never rejected.
    if kind is Kind.UNEXPECTED:
        assert (action.act, action.reason) == (Act.STOP_RUN, StopReason.UNEXPECTED_ANSWER)


@pytest.mark.parametrize(("kind", "act"), [(Kind.OK, Act.DONE), (Kind.GONE, Act.DONE)])
def test_success_is_done(kind: Kind, act: Act) -> None:
    assert decide(kind, Situation(Op.POST, 1, 5)).act is act


@pytest.mark.parametrize("kind", [Kind.THROTTLED, Kind.SERVER_ERROR, Kind.NO_ANSWER])
def test_transient_answers_retry_until_the_last_attempt_then_fail(kind: Kind) -> None:
    assert decide(kind, Situation(Op.POST, 4, 5)).act is Act.RETRY
    last = decide(kind, Situation(Op.POST, 5, 5))
    assert (last.act, last.outcome) == (Act.SETTLE, Outcome.FAILED)


@pytest.mark.parametrize("kind", [Kind.NO_ANSWER, Kind.UNREACHABLE])
def test_an_endpoint_that_never_answered_is_given_up_early(kind: Kind) -> None:
    for unanswered, ever in itertools.product(range(1, 6), (False, True)):
        action = decide(kind, Situation(Op.POST, 1, 5, 100, unanswered, ever))
        if not ever and unanswered >= UNREACHABLE_AFTER:
            assert (action.act, action.reason) == (Act.STOP_RUN, StopReason.UNREACHABLE)
        else:
            assert action.act is Act.RETRY


def test_members_refused_split_until_each_offender_stands_alone() -> None:
    assert decide(Kind.MEMBERS_REFUSED, Situation(Op.POST, 1, 5, size=2)).act is Act.SPLIT
    alone = decide(Kind.MEMBERS_REFUSED, Situation(Op.POST, 1, 5, size=1))
    assert (alone.act, alone.outcome) == (Act.SETTLE, Outcome.REJECTED)


def test_quota_isolates_what_fits_then_stops_adding_to_the_channel() -> None:
    assert decide(Kind.QUOTA, Situation(Op.POST, 1, 5, size=8)).act is Act.SPLIT
    full = decide(Kind.QUOTA, Situation(Op.POST, 1, 5, size=1))
    assert (full.act, full.outcome) == (Act.CHANNEL_FULL, Outcome.REJECTED)
    # The published quota is of ECS members: one refused stops no IP member.
    ecs = decide(Kind.QUOTA, Situation(Op.POST, 1, 5, size=1, ecs=True))
    assert (ecs.act, ecs.outcome) == (Act.SETTLE, Outcome.REJECTED)
    # Deletions that free room go first: the additions wait for them.
    waiting = Situation(Op.POST, 1, 5, size=8, deletes_pending=True)
    assert decide(Kind.QUOTA, waiting).act is Act.DEFER


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (Kind.AUTH_REFUSED, StopReason.AUTH_REFUSED),
        (Kind.UNTRUSTED, StopReason.CERTIFICATE_REFUSED),
        (Kind.UNEXPECTED, StopReason.UNEXPECTED_ANSWER),
    ],
)
def test_refusals_of_the_whole_run_stop_it(kind: Kind, reason: StopReason) -> None:
    for op in Op:
        action = decide(kind, Situation(op, 1, 5))
        assert (action.act, action.reason, action.outcome) == (
            Act.STOP_RUN,
            reason,
            Outcome.ABORTED,
        )


def test_a_refused_channel_stops_that_channel_only() -> None:
    action = decide(Kind.CHANNEL_REFUSED, Situation(Op.LIST, 1, 5))
    assert (action.act, action.outcome) == (Act.STOP_CHANNEL, Outcome.FAILED)
    assert decide(Kind.BAD_REQUEST, Situation(Op.POST, 1, 5, size=9)).outcome is Outcome.REJECTED


@given(
    counts=st.dictionaries(st.sampled_from(list(Outcome)), st.integers(0, 3)),
    guarded=st.integers(0, 2),
    pending_removals=st.integers(0, 2),
    failed_removals=st.integers(0, 2),
)
def test_an_exit_code_says_what_the_rows_came_to(
    counts: dict[Outcome, int], guarded: int, pending_removals: int, failed_removals: int
) -> None:
    """The README's table for a run that ended by itself: no valid row at all is 5 (an
    empty inventory, or one whose every row is invalid, which did nothing); with a valid
    row, failed rows are 1, then the sync's 6 and 7, then invalid rows alone are 4."""
    tally = Tally()
    for outcome, count in counts.items():
        tally.add(outcome, count=count)
    facts = Facts(
        tally, tally.total, None, False, False, guarded, pending_removals, failed_removals
    )
    code = exit_code(facts)
    valid = tally.total - tally[Outcome.INVALID]
    if valid == 0:
        assert code is ExitCode.EMPTY_INPUT
    elif (
        tally[Outcome.REJECTED]
        or tally[Outcome.FAILED]
        or tally[Outcome.ABORTED]
        or failed_removals
    ):
        assert code is ExitCode.ROWS_FAILED
    elif guarded:
        assert code is ExitCode.PRUNE_GUARDED
    elif tally[Outcome.PENDING] or pending_removals:
        assert code is ExitCode.CHANGES_PENDING
    else:
        assert code is (ExitCode.INVALID_ROWS if tally[Outcome.INVALID] else ExitCode.OK)
