"""Per-channel batching, capped by member count and by serialised body size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, NamedTuple, TypeVar

from worker.members import Channel

T = TypeVar("T")

# len(b'{"members":[]}'): the body around the members.
ENVELOPE_BYTES: Final = 14
_NOTHING: Final[tuple[()]] = ()


@dataclass(slots=True)
class Batch(Generic[T]):
    """Items bound for one channel in one request, in input order."""

    channel: Channel
    items: list[T] = field(default_factory=list)
    body_bytes: int = ENVELOPE_BYTES

    def add(self, item: T, size: int) -> None:
        self.body_bytes += size + (1 if self.items else 0)
        self.items.append(item)

    def fits(self, size: int, max_bytes: int) -> bool:
        return not self.items or self.body_bytes + size + 1 <= max_bytes


class Run(NamedTuple, Generic[T]):
    """Items of one channel, in input order, with their sizes and places in the input."""

    channel: Channel
    items: list[T]
    sizes: Sequence[int]
    order: Sequence[int]


def _first(pair: tuple[int, object]) -> int:
    return pair[0]


class Batcher(Generic[T]):
    """Group items into batches per channel, feed/flush style; knows nothing about HTTP.

    ``feed`` adds one item with its serialised size and returns the batches it completed
    (usually none, at most two); ``flush`` returns every partial batch at end of input, in
    the order they were begun; ``take`` returns one channel's partial batch. Guarantees:
    every fed item is in exactly one batch, in input order within its channel; no batch
    holds more than ``max_items`` items, and no batch's body exceeds ``max_bytes`` unless a
    single item alone does.
    """

    __slots__ = ("_max_bytes", "_max_items", "_open")

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("batch limits must be positive")
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._open: dict[Channel, Batch[T]] = {}

    def feed(self, channel: Channel, item: T, size: int) -> Sequence[Batch[T]]:
        batch = self._open.get(channel)
        done: Sequence[Batch[T]] = _NOTHING
        if batch is None:
            batch = self._open[channel] = Batch(channel)
        elif not batch.fits(size, self._max_bytes):
            done = (batch,)
            # Re-inserted, not overwritten: a dict keeps a key's first position, and flush
            # promises the order in which batches were begun.
            del self._open[channel]
            batch = self._open[channel] = Batch(channel)
        batch.add(item, size)
        if len(batch.items) >= self._max_items:
            del self._open[channel]
            return (*done, batch)
        return done

    def by_count(self, channels: Iterable[Channel], largest: int) -> bool:
        """Whether items of at most ``largest`` bytes, fed to ``channels``, can only ever
        be held back by the count cap: then :meth:`feed_runs` batches them exactly as
        :meth:`feed` would one by one."""
        limit, cap = self._max_items, self._max_bytes
        if ENVELOPE_BYTES + limit * (largest + 1) - 1 > cap:
            return False
        for channel in channels:
            batch = self._open.get(channel)
            if batch is not None:
                room = limit - len(batch.items)
                if batch.body_bytes + room * (largest + 1) > cap:
                    return False
        return True

    def feed_runs(self, runs: Sequence[Run[T]]) -> list[Batch[T]]:
        """Feed runs of items, each run one channel's (no two runs the same channel),
        whose sizes :meth:`by_count` cleared: what ``feed`` of every item in input order
        would give (the completed batches, in the order the items that complete them
        came; the open ones left for ``flush`` in the order their first items came),
        with slices instead of a call per item. ``Run.order`` gives each item's place
        in the input."""
        assert len({run.channel for run in runs}) == len(runs), "one run a channel"
        limit = self._max_items
        opened = self._open
        completed: list[tuple[int, Batch[T]]] = []
        begun: list[tuple[int, Batch[T]]] = []
        for run in runs:
            channel, items, sizes, order = run
            end = len(items)
            at = 0
            batch = opened.get(channel)
            if batch is not None:
                at = min(limit - len(batch.items), end)
                batch.items.extend(items[:at])
                batch.body_bytes += sum(sizes[:at]) + at
                if len(batch.items) < limit:
                    continue
                del opened[channel]
                completed.append((order[at - 1], batch))
            while at < end:
                stop = min(at + limit, end)
                batch = Batch(channel, items[at:stop], ENVELOPE_BYTES + sum(sizes[at:stop]))
                batch.body_bytes += stop - at - 1
                if stop - at == limit:
                    completed.append((order[stop - 1], batch))
                else:
                    begun.append((order[at], batch))
                at = stop
        # Sorted on the input place alone: two entries never share one.
        completed.sort(key=_first)
        begun.sort(key=_first)
        for _, batch in begun:
            opened[batch.channel] = batch
        return [batch for _, batch in completed]

    def flush(self) -> list[Batch[T]]:
        batches = list(self._open.values())
        self._open.clear()
        return batches

    def take(self, channel: Channel) -> Batch[T] | None:
        """Remove and return the channel's partial batch, if any (its end came early)."""
        return self._open.pop(channel, None)

    @property
    def pending(self) -> int:
        """Items fed but not yet returned in a batch."""
        return sum(len(batch.items) for batch in self._open.values())
