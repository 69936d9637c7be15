"""Rate and concurrency limits: how fast requests leave, and how many are out at once."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from worker.members import Channel

T = TypeVar("T")

_DECREASE: Final = 0.5
# No window of this length may hold more than rate*WINDOW requests. A service's limiter
# counts arrivals, which trail departures by a jittery connect or send; the 2% margin
# keeps that jitter from turning a legal departure into a 429.
_WINDOW: Final = 0.1 * 1.01
_DECREASE_EVERY: Final = 1.0
_RECOVERY_SECONDS: Final = 10.0


class RateLimiter:
    """Spaces requests evenly at no more than ``rate`` per second, and adapts to the server.

    Parameters:
        rate: the ceiling in requests per second (``--rate``); the effective rate never
            exceeds it.
        min_rate: the floor the effective rate may fall to under throttling.
        clock: a monotonic clock in seconds, for tests; the event loop's sleep must agree.

    Every :meth:`acquire` must be followed by exactly one :meth:`sent` (the
    request was written to the socket) or :meth:`abandoned` (it never will be).

    Guarantees: slots are handed out ``1/effective`` seconds apart (virtual scheduling, as in
    GCRA), so an idle spell banks no burst and a late wake-up does not shift later slots.
    On top, a sliding window caps what reaches the wire: no 101 ms holds more than
    ``max(1, effective/10)`` sends. It counts sends at the time they were reported, and a
    request released but not yet sent as if it were sent now, so a busy event loop that
    writes requests later than it released them still cannot put more than the cap on
    the wire in any window. ``throttled`` halves the effective rate (at most once a second,
    since a burst of 429s is one signal, not many) and honours ``Retry-After`` by holding
    every caller; ``succeeded`` raises it additively, back to ``rate`` in about ten seconds
    of good answers.
    """

    __slots__ = (
        "_clock",
        "_last_decrease",
        "_next",
        "_sends",
        "_unsent",
        "changes",
        "effective",
        "min_rate",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.min_rate = min(rate, min_rate if min_rate is not None else max(0.5, rate / 64))
        self.effective = rate
        self._clock = clock
        self._next = -float("inf")
        self._last_decrease = -float("inf")
        self._sends: deque[float] = deque()
        self._unsent = 0
        self.changes: list[tuple[float, float]] = [(clock(), rate)]

    def reserve(self, now: float) -> float:
        """Claim the next slot; returns how long to wait for it (0 when it is now)."""
        slot = max(self._next, now)
        self._next = slot + 1.0 / self.effective
        return slot - now

    def window_wait(self, now: float) -> float:
        """How long a caller must still wait so that the last window stays within its cap."""
        cap = max(1, int(self.effective * 0.1))
        sends = self._sends
        while sends and sends[0] <= now - _WINDOW:
            sends.popleft()
        room = cap - self._unsent
        if len(sends) < room:
            return 0.0
        if room <= 0:
            # Every slot of the window is taken by requests still on their way out; their
            # sends will tell. Look again after a short while rather than never.
            return _WINDOW / cap
        return sends[len(sends) - room] + _WINDOW - now

    def depart(self) -> None:
        """A caller leaves now: counted as on the wire until :meth:`sent` or :meth:`abandoned`."""
        self._unsent += 1

    def sent(self, at: float) -> None:
        """A request released earlier was written to the socket at ``at``."""
        if self._unsent:
            self._unsent -= 1
        sends = self._sends
        # Sends are reported in the order they happen; a clock that disagrees must not
        # unsort the window.
        sends.append(max(at, sends[-1]) if sends else at)

    def abandoned(self) -> None:
        """A request released earlier will not go out (the run stopped, or it failed first)."""
        if self._unsent:
            self._unsent -= 1

    async def acquire(self) -> None:
        """Wait for a slot, then for room in the window; returns when the request may leave."""
        delay = self.reserve(self._clock())
        if delay > 0:
            await asyncio.sleep(delay)
        # No await between the last check and depart(): callers woken together leave in turn.
        while (wait := self.window_wait(self._clock())) > 0:  # noqa: ASYNC110 - a deadline, not an event
            await asyncio.sleep(wait)
        self.depart()

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (the server asked via Retry-After)."""
        self._next = max(self._next, self._clock() + seconds)

    def throttled(self, retry_after: float | None) -> None:
        now = self._clock()
        if now - self._last_decrease >= _DECREASE_EVERY:
            self._last_decrease = now
            self._set(max(self.min_rate, self.effective * _DECREASE), now)
        if retry_after:
            self.pause(retry_after)

    def succeeded(self) -> None:
        if self.effective < self.rate:
            step = self.rate / (_RECOVERY_SECONDS * self.effective)
            self._set(min(self.rate, self.effective + step), self._clock())

    def _set(self, rate: float, now: float) -> None:
        self.effective = rate
        last_time, last_rate = self.changes[-1]
        # Keep the history at about one point a second however often the rate moves.
        if now - last_time < 1.0 and len(self.changes) > 1:
            self.changes[-1] = (last_time, rate)
        elif rate != last_rate:
            self.changes.append((now, rate))


class ChannelQueues(Generic[T]):
    """Pending work per channel, handed out round-robin so that no channel has more than
    ``per_channel`` items in flight. Pure bookkeeping: callers do the waiting.

    ``take`` returns the next item any channel may start, or None; ``release`` ends one
    item of a channel; ``drop`` removes a channel's pending items (its channel is gone);
    ``drain`` removes everything pending.
    """

    __slots__ = ("_inflight", "_pending", "_per_channel", "_ready", "_size")

    def __init__(self, per_channel: int) -> None:
        if per_channel < 1:
            raise ValueError("per_channel must be at least 1")
        self._per_channel = per_channel
        self._pending: dict[Channel, deque[T]] = {}
        self._inflight: dict[Channel, int] = {}
        self._ready: deque[Channel] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def in_flight(self) -> int:
        return sum(self._inflight.values())

    def put(self, channel: Channel, item: T, *, first: bool = False) -> None:
        queue = self._pending.get(channel)
        if queue is None:
            queue = self._pending[channel] = deque()
            if self._inflight.get(channel, 0) < self._per_channel:
                self._ready.append(channel)
        if first:
            queue.appendleft(item)
        else:
            queue.append(item)
        self._size += 1

    def take(self) -> tuple[Channel, T] | None:
        if not self._ready:
            return None
        channel = self._ready.popleft()
        queue = self._pending[channel]
        item = queue.popleft()
        self._size -= 1
        inflight = self._inflight[channel] = self._inflight.get(channel, 0) + 1
        if not queue:
            del self._pending[channel]
        elif inflight < self._per_channel:
            self._ready.append(channel)
        return channel, item

    def release(self, channel: Channel) -> None:
        inflight = self._inflight[channel] - 1
        if inflight:
            self._inflight[channel] = inflight
        else:
            del self._inflight[channel]
        if channel in self._pending and inflight == self._per_channel - 1:
            self._ready.append(channel)

    def drop(self, channel: Channel) -> list[T]:
        queue = self._pending.pop(channel, None)
        if queue is None:
            return []
        if channel in self._ready:
            self._ready.remove(channel)
        self._size -= len(queue)
        return list(queue)

    def drain(self) -> list[T]:
        items = [item for queue in self._pending.values() for item in queue]
        self._pending.clear()
        self._ready.clear()
        self._size = 0
        return items
