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
# The schedule aims this far under the effective rate. The window below is a hard cap at
# exactly the effective rate; with the schedule 1% under it, the window binds only after
# the event loop stalled, instead of on every request. When it binds, a caller waits for
# the oldest departure to leave the window and then for the loop to wake it, and that
# wake-up delay would be lost on every request: 0.974R at 200/s, against 0.983R this way.
_AIM: Final = 0.99
_DECREASE_EVERY: Final = 1.0
_RECOVERY_SECONDS: Final = 10.0


class RateLimiter:
    """Spaces requests evenly at no more than ``rate`` per second, and adapts to the server.

    Parameters:
        rate: the ceiling in requests per second (``--rate``); the effective rate never
            exceeds it.
        min_rate: the floor the effective rate may fall to under throttling.
        clock: a monotonic clock in seconds, for tests; the event loop's sleep must agree.

    Two waits make up a request's way out: :meth:`delay`, for its slot in the schedule,
    before the request is built (the caller sleeps, and can give up on a stop); and
    :meth:`departure`, for room in the window, awaited right before its bytes are written
    to the socket.

    Guarantees: slots are handed out ``1/(0.99 effective)`` seconds apart (virtual
    scheduling, as in GCRA), so an idle spell banks no burst and a late wake-up does not
    shift later slots. On top, a sliding window caps departures at the effective rate: no
    ``cap/effective`` seconds hold more than ``cap = max(1, effective/10)`` of them (no
    100 ms more than a tenth of the rate, for rates of 10/s and more), so when the event
    loop stalls and many late callers wake at once they leave spread out, never as a
    burst. Counted at the socket write, not at the slot, a departure is what the service
    sees arrive, however late a busy event loop gets to the write.

    ``throttled`` halves the effective rate (at most once a second, since a burst of 429s
    is one signal, not many) and honours ``Retry-After`` by holding every caller. The
    effective rate climbs back with time, whatever the answers are (a run of 400s or
    timeouts says nothing about the service's rate limit): additively, by ``rate`` every
    ten seconds, never above ``rate``.
    """

    __slots__ = (
        "_clock",
        "_departures",
        "_held_until",
        "_last_decrease",
        "_next",
        "_stamp",
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
        self._held_until = -float("inf")
        self._last_decrease = -float("inf")
        self._stamp = clock()
        self._departures: deque[float] = deque()
        self.changes: list[tuple[float, float]] = [(clock(), rate)]

    def reserve(self, now: float) -> float:
        """Claim the next slot; returns how long to wait for it (0 when it is now)."""
        self._recover(now)
        slot = max(self._next, now)
        self._next = slot + 1.0 / (self.effective * _AIM)
        return slot - now

    def window_wait(self, now: float) -> float:
        """How long a caller must still wait so that the last window stays within its cap."""
        # A tenth of a second's worth of requests, over the time the ceiling allows for
        # them: 100 per 100 ms at 1,000/s, 1 per 66.7 ms at 15/s.
        cap = max(1, int(self.effective * 0.1))
        window = cap / self.effective
        if cap == 1:
            # One request a window (under 20/s) leaves nothing to catch up after a stall,
            # and a service's bucket of one (a burst of 1) counts the gap between arrivals,
            # which jitter shortens: two writes exactly 1/rate apart could arrive as less.
            # So this window is the schedule's, 1% under the rate.
            window /= _AIM
        departures = self._departures
        while departures and departures[0] <= now - window:
            departures.popleft()
        if len(departures) < cap:
            return 0.0
        return departures[len(departures) - cap] + window - now

    def depart(self, now: float) -> None:
        self._departures.append(now)

    def delay(self) -> float:
        """Claim the next slot now; returns how long to wait for it."""
        return self.reserve(self._clock())

    def held(self) -> float:
        """How long a pause the server asked for still holds every caller (0 when none
        does): a caller whose slot came before the pause began waits this too."""
        return max(0.0, self._held_until - self._clock())

    async def departure(self) -> None:
        """Wait for room in the window, then count a request as leaving now."""
        # No await between the last check and depart(): callers woken together leave in turn.
        while (wait := self.window_wait(self._clock())) > 0:  # noqa: ASYNC110 - a deadline, not an event
            await asyncio.sleep(wait)
        self.depart(self._clock())

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (the server asked via Retry-After):
        slots are handed out from then, and :meth:`held` tells a caller whose slot came
        before it how long to wait still."""
        until = self._clock() + seconds
        self._next = max(self._next, until)
        self._held_until = max(self._held_until, until)

    def throttled(self, retry_after: float | None) -> None:
        now = self._clock()
        self._recover(now)
        if now - self._last_decrease >= _DECREASE_EVERY:
            self._last_decrease = now
            self._set(max(self.min_rate, self.effective * _DECREASE), now)
        if retry_after:
            self.pause(retry_after)

    def _recover(self, now: float) -> None:
        if self.effective < self.rate and now > self._stamp:
            step = (now - self._stamp) * self.rate / _RECOVERY_SECONDS
            self._set(min(self.rate, self.effective + step), now)
        self._stamp = max(self._stamp, now)

    def _set(self, rate: float, now: float) -> None:
        self.effective = rate
        last_time, last_rate = self.changes[-1]
        # Keep the history at about one point a second however often the rate moves.
        if now - last_time < 1.0 and len(self.changes) > 1:
            self.changes[-1] = (last_time, rate)
        elif rate != last_rate:
            self.changes.append((now, rate))


class OutOfReach:
    """Tells, once, that the asked rate is out of the worker's reach, not the service's.

    Fed a sample every second or so, it looks at windows of ``window`` seconds in which
    the service set no limit (no 429 lowered the rate, fewer requests were in flight than
    ``concurrency`` allows) and there was input left: when such a window used fewer than
    ``share`` of the slots while the process kept ``busy`` of a core working, it is the
    worker's own pace (its event loop, on one core) that holds the rate down.
    ``observe`` returns the rate achieved over that window, once; None otherwise.
    """

    __slots__ = ("_busy", "_concurrency", "_rate", "_share", "_start", "_told", "_window")

    def __init__(
        self,
        rate: float,
        concurrency: int,
        *,
        window: float = 5.0,
        share: float = 0.9,
        busy: float = 0.85,
    ) -> None:
        self._rate = rate
        self._concurrency = concurrency
        self._window = window
        self._share = share
        self._busy = busy
        self._start: tuple[float, float, int] | None = None
        self._told = False

    def observe(
        self, now: float, cpu: float, sent: int, *, throttled: bool, in_flight: int, ended: bool
    ) -> float | None:
        """One sample: the clock, the process's CPU seconds, the requests sent so far,
        whether the service throttled, the requests in flight, and whether the input and
        the queues are done."""
        if self._told:
            return None
        if throttled or ended or in_flight >= self._concurrency or self._start is None:
            self._start = (now, cpu, sent)
            return None
        began, cpu_then, sent_then = self._start
        elapsed = now - began
        if elapsed < self._window:
            return None
        self._start = (now, cpu, sent)
        achieved = (sent - sent_then) / elapsed
        if achieved < self._share * self._rate and (cpu - cpu_then) / elapsed >= self._busy:
            self._told = True
            return achieved
        return None


class ChannelQueues(Generic[T]):
    """Pending work per channel, handed out round-robin so that no channel has more than
    ``per_channel`` items in flight. Pure bookkeeping: callers do the waiting.

    ``take`` returns the next item any channel may start, or None; ``release`` ends one
    item of a channel; ``drop`` removes a channel's pending items (those ``which`` picks,
    or all); ``drain`` removes everything pending. ``load`` is the sum of the pending
    items' ``weight`` (what a reader ahead should be held back by).
    """

    __slots__ = ("_inflight", "_pending", "_per_channel", "_ready", "_size", "_weight", "load")

    def __init__(self, per_channel: int, weight: Callable[[T], int] = lambda item: 1) -> None:
        if per_channel < 1:
            raise ValueError("per_channel must be at least 1")
        self._per_channel = per_channel
        self._pending: dict[Channel, deque[T]] = {}
        self._inflight: dict[Channel, int] = {}
        self._ready: deque[Channel] = deque()
        self._size = 0
        self._weight = weight
        self.load = 0

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
        self.load += self._weight(item)

    def take(self) -> tuple[Channel, T] | None:
        if not self._ready:
            return None
        channel = self._ready.popleft()
        queue = self._pending[channel]
        item = queue.popleft()
        self._size -= 1
        self.load -= self._weight(item)
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

    def drop(self, channel: Channel, which: Callable[[T], bool] | None = None) -> list[T]:
        queue = self._pending.get(channel)
        if queue is None:
            return []
        dropped: list[T] = []
        kept: list[T] = []
        for item in queue:
            (dropped if which is None or which(item) else kept).append(item)
        if kept:
            queue.clear()
            queue.extend(kept)
        else:
            del self._pending[channel]
            if channel in self._ready:
                self._ready.remove(channel)
        self._size -= len(dropped)
        self.load -= sum(map(self._weight, dropped))
        return dropped

    def drain(self) -> list[T]:
        items = [item for queue in self._pending.values() for item in queue]
        self._pending.clear()
        self._ready.clear()
        self._size = 0
        self.load = 0
        return items
