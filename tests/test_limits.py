"""Rate and concurrency limits, driven by a fake clock: no sleeping, no timing."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from worker.limits import ChannelQueues, RateLimiter
from worker.members import Channel

EPSILON = 1e-9


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


EVENT = st.one_of(
    st.tuples(st.just("reserve"), st.floats(0, 0.3)),
    st.tuples(st.just("throttled"), st.floats(0, 0.6), st.none() | st.floats(0, 3)),
    st.tuples(st.just("pause"), st.floats(0, 0.5), st.floats(0, 2)),
)


@settings(max_examples=200)
@given(
    st.floats(0.5, 200),
    st.none() | st.floats(0.01, 400),
    st.lists(EVENT, max_size=80),
)
def test_rate_limiter_spacing_and_adaptation(
    rate: float, min_rate: float | None, events: list[tuple[object, ...]]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, min_rate=min_rate, clock=clock)
    floor = limiter.min_rate
    assert floor <= rate
    slots: list[tuple[float, float]] = []  # (slot, effective rate when it was reserved)
    decreases: list[float] = []
    not_before = -float("inf")
    for kind, advance, *arg in events:
        clock.now += advance  # type: ignore[operator]
        before = limiter.effective
        if kind == "reserve":
            delay = limiter.reserve(clock.now)
            # The spacing after this slot follows the rate in force when it was reserved.
            effective = limiter.effective
            assert delay >= 0
            slot = clock.now + delay
            assert slot >= not_before - EPSILON
            if slots:
                previous, spacing_rate = slots[-1]
                assert slot - previous >= 1 / spacing_rate - EPSILON
            slots.append((slot, effective))
        elif kind == "throttled":
            retry_after = arg[0]
            limiter.throttled(retry_after)  # type: ignore[arg-type]
            if retry_after:
                not_before = max(not_before, clock.now + retry_after)  # type: ignore[operator]
        else:
            limiter.pause(arg[0])  # type: ignore[arg-type]
            not_before = max(not_before, clock.now + arg[0])  # type: ignore[operator]
        if limiter.effective < before:
            decreases.append(clock.now)
        assert floor - EPSILON <= limiter.effective <= rate
    # A burst of 429s within a second is one signal: at most one halving per second.
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(decreases))
    times = [slot for slot, _ in slots]
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 0.1 - EPSILON)
        assert in_window <= rate * 0.1 + 1


def test_the_rate_recovers_with_time_to_the_ceiling_and_no_further() -> None:
    # Whatever the answers after a 429 (400s, timeouts: none of them a 201), the rate
    # climbs back as time passes: by the ceiling every ten seconds.
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock)
    limiter.throttled(None)
    assert limiter.effective == 5
    clock.now += 1
    limiter.throttled(None)
    assert limiter.effective == 3
    clock.now += 1
    limiter.reserve(clock.now)
    assert limiter.effective == pytest.approx(4)
    clock.now += 600
    limiter.reserve(clock.now)
    assert limiter.effective == 10
    assert limiter.changes[0] == (1000.0, 10)
    assert limiter.changes[-1][1] == 10


def test_throttling_stops_at_the_floor() -> None:
    clock = FakeClock()
    limiter = RateLimiter(8, min_rate=3, clock=clock)
    for _ in range(5):
        limiter.throttled(None)
        clock.now += 1
    assert limiter.effective == 3


def test_an_idle_spell_banks_no_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock)
    assert limiter.reserve(clock.now) == 0
    clock.now += 60
    first, second, third = (limiter.reserve(clock.now) for _ in range(3))
    # Evenly spaced, just over 1/rate apart (the schedule aims 1% under the rate).
    assert first == 0
    assert 0.5 <= second <= 0.51
    assert third == pytest.approx(2 * second)


@pytest.mark.parametrize("rate", [0.5, 3.0, 15.0, 25.0, 200.0, 1000.0])
def test_steady_demand_gets_the_rate_whatever_its_size(rate: float) -> None:
    # The window is sized from the rate: a fixed 100 ms window of int(rate/10) requests
    # held 15/s to 9.9/s and 25/s to 19.8/s.
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock)
    start, departures = clock(), 0
    while True:
        clock.now += limiter.reserve(clock())
        while (wait := limiter.window_wait(clock())) > 0:
            clock.now += wait
        if clock() - start >= 10.0:
            break
        limiter.depart(clock())
        departures += 1
    assert 0.98 * rate <= departures / 10.0 <= rate


def test_a_pause_holds_callers_whose_slot_came_before_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock)
    for _ in range(5):
        limiter.reserve(clock.now)
    assert limiter.held() == 0
    limiter.pause(2.0)
    clock.now += 0.05  # the five slots have come; the pause has not ended
    assert limiter.held() == pytest.approx(1.95)
    clock.now += 1.95
    assert limiter.held() == 0
    assert limiter.reserve(clock.now) == 0


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


CHANNELS = [Channel("p", "i", f"c{n}") for n in range(3)]


class QueuesMachine(RuleBasedStateMachine):
    """ChannelQueues against a model: per-channel FIFO (``first`` jumps the line)."""

    taken = Bundle("taken")

    def __init__(self) -> None:
        super().__init__()
        self.per_channel = 0
        self.queues: ChannelQueues[int] | None = None
        self.model: dict[Channel, deque[int]] = {c: deque() for c in CHANNELS}
        self.inflight = dict.fromkeys(CHANNELS, 0)
        self.counter = 0
        self.put_items: set[int] = set()
        self.out: list[int] = []

    @precondition(lambda self: self.queues is None)
    @rule(per_channel=st.integers(1, 3))
    def start(self, per_channel: int) -> None:
        self.per_channel = per_channel
        self.queues = ChannelQueues(per_channel)

    @precondition(lambda self: self.queues is not None)
    @rule(channel=st.sampled_from(CHANNELS), first=st.booleans())
    def put(self, channel: Channel, first: bool) -> None:
        assert self.queues is not None
        self.counter += 1
        self.queues.put(channel, self.counter, first=first)
        self.put_items.add(self.counter)
        (self.model[channel].appendleft if first else self.model[channel].append)(self.counter)

    @precondition(lambda self: self.queues is not None)
    @rule(target=taken)
    def take(self) -> Channel | None:
        assert self.queues is not None
        got = self.queues.take()
        eligible = [c for c in CHANNELS if self.model[c] and self.inflight[c] < self.per_channel]
        if got is None:
            assert not eligible
            return None
        channel, item = got
        assert channel in eligible
        assert item == self.model[channel].popleft()
        self.inflight[channel] += 1
        self.out.append(item)
        return channel

    @rule(channel=consumes(taken))
    def release(self, channel: Channel | None) -> None:
        if channel is None:
            return
        assert self.queues is not None
        self.queues.release(channel)
        self.inflight[channel] -= 1

    @precondition(lambda self: self.queues is not None)
    @rule(channel=st.sampled_from(CHANNELS))
    def drop(self, channel: Channel) -> None:
        assert self.queues is not None
        assert self.queues.drop(channel) == list(self.model[channel])
        self.out.extend(self.model[channel])
        self.model[channel].clear()

    @precondition(lambda self: self.queues is not None)
    @rule()
    def drain(self) -> None:
        assert self.queues is not None
        drained = self.queues.drain()
        expected = [item for c in CHANNELS for item in self.model[c]]
        assert sorted(drained) == sorted(expected)
        self.out.extend(drained)
        for queue in self.model.values():
            queue.clear()

    @invariant()
    def accounted(self) -> None:
        if self.queues is None:
            return
        assert all(n <= self.per_channel for n in self.inflight.values())
        assert self.queues.in_flight == sum(self.inflight.values())
        assert len(self.queues) == sum(len(q) for q in self.model.values())
        pending = [item for q in self.model.values() for item in q]
        # Every item put is either still pending or handed out exactly once.
        assert len(self.out) == len(set(self.out))
        assert set(self.out) | set(pending) == self.put_items
        assert not set(self.out) & set(pending)


TestChannelQueues = QueuesMachine.TestCase
TestChannelQueues.settings = settings(max_examples=150, stateful_step_count=40)


def test_per_channel_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ChannelQueues[int](0)


@settings(max_examples=200)
@given(
    rate=st.sampled_from([1.0, 10.0, 100.0, 1000.0]),
    groups=st.lists(
        st.tuples(st.integers(1, 64), st.floats(min_value=0.0, max_value=0.5)),
        min_size=1,
        max_size=20,
    ),
)
def test_callers_woken_together_never_leave_as_a_burst(
    rate: float, groups: list[tuple[int, float]]
) -> None:
    """Callers reserve slots ahead (one per worker); when the event loop stalls, all of them
    wake together, late. They must still leave spread out: no 100 ms window holds more than
    max(1, rate/10) departures."""
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock)
    departures: list[float] = []
    for callers, stall in groups:
        start = clock()
        # Every caller whose slot fell inside the stall wakes when it ends.
        wakes = sorted(max(start + limiter.reserve(start), start + stall) for _ in range(callers))
        for wake in wakes:
            clock.now = max(clock.now, wake)
            while (wait := limiter.window_wait(clock())) > 0:
                clock.now += wait
            limiter.depart(clock())
            departures.append(clock())
    cap = max(1, int(rate * 0.1))
    for i, first in enumerate(departures):
        assert sum(1 for t in departures[i:] if t < first + 0.1) <= cap
