"""Injected faults and throttling: seeded draws, per-project token buckets, and the
channels with a write in progress.

Pure: randomness comes only from the ``random.Random`` passed in and time only from the
``now`` arguments (monotonic seconds), so tests and seeded runs are reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum


class Fault(StrEnum):
    """The kinds of injected failure, as counted in the stats."""

    FAIL = "fail"
    FAIL_AFTER_COMMIT = "fail_after_commit"
    RESET = "reset"
    SLOW = "slow"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Draw:
    """What happens to one API request.

    ``fault`` is at most one of FAIL (answer 500, apply nothing), RESET (close the
    connection, apply nothing) and FAIL_AFTER_COMMIT (apply, then answer 500). ``slow`` is
    the extra delay of the slow fault in seconds (0.0 when it did not hit); ``latency`` is
    the delay of every answer in seconds (latency ± jitter, never negative).
    """

    fault: Fault | None
    slow: float
    latency: float


NO_FAULT = Draw(None, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities per request in [0, 1] and delays in milliseconds."""

    fail: float = 0.0
    fail_after_commit: float = 0.0
    reset: float = 0.0
    slow: float = 0.0
    slow_ms: int = 0
    latency_ms: int = 0
    jitter_ms: int = 0

    @property
    def active(self) -> bool:
        return any(
            (
                self.fail,
                self.fail_after_commit,
                self.reset,
                self.slow,
                self.latency_ms,
                self.jitter_ms,
            )
        )


class FaultPlan:
    """Draws a :class:`Draw` per request from a seeded generator.

    Each draw consumes the same number of random values whatever the outcome, so the
    n-th request of a seeded run meets the same fate whatever happened to the others.
    Precedence when several hit: FAIL, then RESET, then FAIL_AFTER_COMMIT.
    """

    __slots__ = ("_rates", "_rng")

    def __init__(self, rates: FaultRates, rng: random.Random) -> None:
        self._rates = rates
        self._rng = rng

    def draw(self) -> Draw:
        rates = self._rates
        if not rates.active:
            return NO_FAULT
        r = self._rng.random
        fail, after, reset, slow, jitter = r(), r(), r(), r(), r()
        fault: Fault | None = None
        if fail < rates.fail:
            fault = Fault.FAIL
        elif reset < rates.reset:
            fault = Fault.RESET
        elif after < rates.fail_after_commit:
            fault = Fault.FAIL_AFTER_COMMIT
        extra = rates.slow_ms / 1000 if slow < rates.slow else 0.0
        latency = max(0.0, rates.latency_ms + (2 * jitter - 1) * rates.jitter_ms) / 1000
        return Draw(fault, extra, latency)


class Throttle:
    """A token bucket per key (the project): ``rate`` tokens a second, ``burst`` at most.

    A bucket starts full. Each admitted request takes one token.
    """

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """Admit a request at monotonic time ``now``: 0.0 when admitted, else the seconds
        until a token will be available (nothing is taken then)."""
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Writes:
    """The channels that have a write in progress.

    The service cannot change one channel from two requests at once: a write that begins
    while another holds the channel is refused (see ``errors.write_conflict``).
    """

    __slots__ = ("_busy",)

    def __init__(self) -> None:
        self._busy: set[Hashable] = set()

    def begin(self, channel: Hashable) -> bool:
        """Hold ``channel`` for a write; False (holding nothing) when another write has it."""
        if channel in self._busy:
            return False
        self._busy.add(channel)
        return True

    def end(self, channel: Hashable) -> None:
        """Let go of a channel that :meth:`begin` gave."""
        self._busy.discard(channel)


def retry_after(wait: float) -> int:
    """The Retry-After value for a wait in seconds: whole seconds, at least 1."""
    return max(1, math.ceil(wait))
