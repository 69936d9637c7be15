"""What a verdict means: the one table of decisions. Pure.

For every :class:`~worker.protocol.Kind` of answer, :data:`TABLE` holds a rule that turns
the situation of the request (its operation, its attempt, how many members it carries, what
the run has seen so far) into an :class:`Action`: finish, retry, split the batch, defer it
behind the channel's deletions, settle its rows with an outcome, stop the channel, stop
adding to the channel, or stop the run. The driver carries actions out and decides nothing
itself; this table is tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from worker.outcomes import Outcome, StopReason
from worker.protocol import Kind, Op

# Exchanges in a row that got no HTTP answer, while no request of the run ever got one,
# after which the endpoint is taken for unreachable: a refused port or a silent host should
# cost seconds, not every batch's retries.
UNREACHABLE_AFTER: Final = 3


# Answers that come from past the service's check of the credentials. Until the first such
# answer the driver sends one request at a time: credentials the service refuses then cost
# one refusal, not one per request in flight (it locks an AK/SK pair for five minutes after
# more than five failures in a row, for every program that uses it).
CREDENTIALS_TAKEN: Final = frozenset(
    {
        Kind.OK,
        Kind.GONE,
        Kind.MEMBERS_REFUSED,
        Kind.QUOTA,
        Kind.BAD_REQUEST,
        Kind.CHANNEL_REFUSED,
    }
)


class Act(StrEnum):
    DONE = "done"  # the operation did what was wanted; the planner takes its payload
    RETRY = "retry"  # send the same request again, after a backoff
    SPLIT = "split"  # send each half of the batch on its own
    DEFER = "defer"  # the channel's deletions first, then this request again
    SETTLE = "settle"  # final for this request's rows: settle them with ``outcome``
    STOP_CHANNEL = "stop_channel"  # final for every request to the channel
    CHANNEL_FULL = "channel_full"  # final for this request and every addition to the channel
    STOP_RUN = "stop_run"  # send nothing more: settle the rest as aborted


@dataclass(frozen=True, slots=True)
class Action:
    act: Act
    outcome: Outcome | None = None
    reason: StopReason | None = None


@dataclass(frozen=True, slots=True)
class Situation:
    """What a decision may depend on.

    ``attempt`` counts this request's tries so far, this one included. ``size`` is the
    number of members the request carries (1 for a list or a delete). ``unanswered`` counts
    exchanges in a row, run-wide, that got no HTTP answer (this one included when it got
    none); ``ever_answered`` says whether any exchange of the run got one. ``deletes_pending``
    says the channel has removals still to make that could free room (sync). ``ecs`` says
    the request adds an ECS member (one with an ``ecs_id``).
    """

    op: Op
    attempt: int
    max_attempts: int
    size: int = 1
    unanswered: int = 0
    ever_answered: bool = True
    deletes_pending: bool = False
    ecs: bool = False


DONE: Final = Action(Act.DONE)
RETRY: Final = Action(Act.RETRY)
SPLIT: Final = Action(Act.SPLIT)
DEFER: Final = Action(Act.DEFER)
FAILED: Final = Action(Act.SETTLE, Outcome.FAILED)
REJECTED: Final = Action(Act.SETTLE, Outcome.REJECTED)


def _stop_run(reason: StopReason) -> Action:
    return Action(Act.STOP_RUN, Outcome.ABORTED, reason)


def _transient(s: Situation) -> Action:
    """Worth another try while tries remain."""
    return RETRY if s.attempt < s.max_attempts else FAILED


def _unanswered(s: Situation) -> Action:
    if not s.ever_answered and s.unanswered >= UNREACHABLE_AFTER:
        return _stop_run(StopReason.UNREACHABLE)
    return _transient(s)


def _members_refused(s: Situation) -> Action:
    # Only some members may be at fault: halves isolate them, so the others still land.
    return SPLIT if s.size > 1 else REJECTED


def _quota(s: Situation) -> Action:
    if s.deletes_pending:
        return DEFER
    if s.size > 1:
        return SPLIT  # what fits is isolated by halves
    # The published quota is of ECS members (cloud servers): one refused says nothing of
    # the IP members still to add, which go on being sent (an ECS member after it is then
    # isolated and refused on its own). A lone IP member refused means the channel is
    # full, and the members still to add are refused without asking again.
    return REJECTED if s.ecs else Action(Act.CHANNEL_FULL, Outcome.REJECTED)


TABLE: Final[Mapping[Kind, Callable[[Situation], Action]]] = {
    Kind.OK: lambda s: DONE,
    Kind.GONE: lambda s: DONE,
    Kind.THROTTLED: _transient,
    Kind.SERVER_ERROR: _transient,
    Kind.NO_ANSWER: _unanswered,
    Kind.UNREACHABLE: _unanswered,
    Kind.MEMBERS_REFUSED: _members_refused,
    Kind.QUOTA: _quota,
    Kind.BAD_REQUEST: lambda s: REJECTED,
    Kind.CHANNEL_REFUSED: lambda s: Action(Act.STOP_CHANNEL, Outcome.FAILED),
    Kind.AUTH_REFUSED: lambda s: _stop_run(StopReason.AUTH_REFUSED),
    Kind.UNTRUSTED: lambda s: _stop_run(StopReason.CERTIFICATE_REFUSED),
    Kind.UNEXPECTED: lambda s: _stop_run(StopReason.UNEXPECTED_ANSWER),
}


def decide(kind: Kind, situation: Situation) -> Action:
    """The action for an answer of ``kind`` in ``situation``."""
    return TABLE[kind](situation)
