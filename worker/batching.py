"""Per-channel batching, capped by member count and by serialised body size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

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
