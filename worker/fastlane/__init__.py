"""The fast lane: the rows the reference rules accept, decided a block at a time.

The reference path makes one :class:`~worker.inventory.Record` per row and
:meth:`~worker.intake.Intake.process` validates and dedupes it, some 10 µs of Python a row.
Most inventories repeat a few values per column (a port, a weight, a channel) and differ in
the host, a canonical dotted quad. The fast lane reads such rows in blocks of columns and
asks the reference rules once per *distinct* cell text instead of once per row:

- the channel: :meth:`Intake.channel` once per distinct (project, instance, channel);
- port, weight, is_backup, member_group_name and status: :func:`members.field_value` once
  per distinct text (each field's rule reads that field alone);
- the host: the reference's own usable-IPv4 rule (``members.USABLE_IPV4``): such a host is
  valid, canonical and its own address as it stands;
- no ECS field, and no cell over ``MAX_CELL_BYTES``.

It may only *accept*. A row it cannot decide so (an invalid value, an IPv6 or DNS host, an
ECS member, a duplicate) goes whole to the reference path, as the very Record the reference
reader makes of its line. Dedupe claims go into the intake's one ``FirstWins``, in input
order, so first-wins spans both lanes. A fast row's request body and landed report row are
joined from pieces the reference made (``orjson`` of each field's value, ``csv_cell`` of
each cell). ``tests/test_fastlane.py`` pins all of it to the reference, row for row and
byte for byte.

Where it does not apply, rows take the reference path: stdin, ``--resume``, ``--shard``,
``sync``, reports fed back as inputs, and report files that landed rows cannot go to
directly (CSV reports of NDJSON inputs and NDJSON reports of CSV inputs among them).
``VPC_MEMBERS_REFERENCE_LANE=1`` sends every row there (the tests compare the two lanes
with it), ``VPC_MEMBERS_LANE_BLOCK`` sets the bytes of a block, and
``VPC_MEMBERS_LANE_SPLIT`` and ``VPC_MEMBERS_LANE_SPAN`` the bytes from which a plan's
NDJSON file is shared with a helper process, and in spans of how many
(:mod:`worker.fastlane.helper`): internal switches, for tests and benchmarks, not options.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from queue import Queue
from threading import Event, Thread
from typing import Final, TypeVar

import orjson

from worker.intake import FastEntry
from worker.inventory import InputError, Reader, Record, Stream
from worker.members import Channel, FieldError, field_value
from worker.reports import csv_cell

# The rows of a block handed to a planner at a time, between yields to the event loop:
# about as long (0.4 ms) as the reference path's slice of 32 records.
SLICE: Final = 256
T = TypeVar("T")
# Distinct cell texts remembered per column, beyond which they are judged once per block.
CACHE_MAX: Final = 4096
# The bytes of a block, when set: for the tests to have many blocks of a small input.
LANE_BLOCK: Final = int(os.environ.get("VPC_MEMBERS_LANE_BLOCK") or 0)


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    return env.get("VPC_MEMBERS_REFERENCE_LANE", "") in ("", "0")


@dataclass(slots=True, eq=False)
class Block:
    """Consecutive rows of one input, decided.

    Row ``i`` is line ``first_line + i``; ``raws[i]`` is its line (the ``i``-th of the
    lines joined in ``data``'s pieces, split when first needed), of which ``rebuild``
    makes its reference Record. ``fast`` is None when every row is fast, else says which
    are; a slow row's Record is in ``records``. A fast row has a channel, a host (its
    address), a size (its body's length) and, for ``run``, its
    :class:`~worker.intake.FastEntry` (None at a slow row's place, or a mere placeholder:
    its Record is taken instead).

    Those are listed by *place*. When every row is fast, the front end sorts the places by
    channel (stably: input order within a channel): ``segments`` are each channel's run of
    places, ``order`` the input row of each place and ``lines`` its line, ``largest`` the
    longest body, so a planner can dedupe and batch a channel's run at once. Otherwise
    places are rows.
    """

    source: str
    first_line: int
    count: int
    fast: list[bool] | None
    records: dict[int, Record]
    channels: list[Channel]
    hosts: list[str]
    sizes: list[int]
    raws: list[bytes] | None
    rebuild: Callable[[bytes, int], Record]
    data: Iterable[bytes] = ()
    # Where ``data`` starts in the input: the helper of a plan sends it in place of data.
    at: int = 0
    entries: list[FastEntry | None] | None = None
    order: list[int] | None = None
    lines: list[int] | None = None
    segments: list[tuple[Channel, int, int]] | None = None
    largest: int = 0
    # Whether a planner took the block's runs at once: decided at its first part.
    whole: bool | None = None

    def record(self, i: int) -> Record:
        """Row ``i``'s reference Record."""
        found = self.records.get(i)
        if found is not None:
            return found
        if self.raws is None:
            self.raws = b"".join(self.data).split(b"\n")
        return self.rebuild(self.raws[i], self.first_line + i)

    def by_row(self) -> None:
        """List places in input order again (for a planner that takes the rows one by one)."""
        order = self.order
        if order is None:
            return
        back = [0] * self.count
        for place, row in enumerate(order):
            back[row] = place
        assert self.segments is not None
        channels = [channel for channel, a, b in self.segments for _ in range(b - a)]
        self.channels = [channels[place] for place in back]
        self.hosts = [self.hosts[place] for place in back]
        self.sizes = [self.sizes[place] for place in back]
        if self.entries is not None:
            self.entries = [self.entries[place] for place in back]
        self.order = self.lines = self.segments = None


@dataclass(frozen=True, slots=True)
class Part:
    """Rows ``start`` to ``stop`` of a block: what a planner is fed at a time."""

    block: Block
    start: int
    stop: int


@dataclass(slots=True)
class FieldInfo:
    """The reference's verdict on one distinct cell text of a member field: ``fragment`` is
    what the field adds to the request body (``,"port":80``), ``cell`` its CSV report cell
    and ``json`` its value in an NDJSON report (``80``; ``null`` when absent)."""

    ok: bool
    fragment: str = ""
    cell: str = ""
    json: str = "null"

    @property
    def size(self) -> int:
        """The fragment's bytes in a body (UTF-8), which is what a body's size counts."""
        return len(self.fragment.encode())


class FieldCache:
    """Verdicts on cell texts, per field, each asked of :func:`members.field_value` once."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[object, FieldInfo]] = {}

    def info(self, name: str, raw: object) -> FieldInfo:
        seen = self._seen.setdefault(name, {})
        found = seen.get(raw)
        if found is None:
            found = _judge(name, raw)
            if len(seen) < CACHE_MAX:
                seen[raw] = found
        return found


def _judge(name: str, raw: object) -> FieldInfo:
    value = field_value(name, raw)
    if isinstance(value, FieldError):
        return FieldInfo(False)
    if value is None:
        return FieldInfo(True)
    # The member's JSON is its fields in order, each as orjson writes it: one field's part.
    json = orjson.dumps(value).decode()
    return FieldInfo(True, f",{orjson.dumps(name).decode()}:{json}", csv_cell(value), json)


def reference_records(reader: Reader, data: bytes, lines: Sequence[int]) -> list[Record]:
    """The reference reader's Records of ``data``: whole lines of ``reader``'s CSV input, one
    record each, which are lines ``lines`` of the input."""
    records = list(Reader.continuing(reader, io.BytesIO(data)))
    assert len(records) == len(lines), "one record a line"
    for record, line in zip(records, lines, strict=True):
        record.line = line
    return records


def rebuilder(reader: Reader) -> Callable[[bytes, int], Record]:
    """What makes the Record of one line of ``reader``'s input, line ``line``."""

    def rebuild(raw: bytes, line: int) -> Record:
        return reference_records(reader, raw + b"\n", (line,))[0]

    return rebuild


class FastStream(Stream):
    """The inputs as blocks the fast lane decided, and Records where it does not apply:
    ``lane`` gives an opened reader's items. Ends, as :class:`Stream` does, at an input
    that cannot be read on, with ``error`` saying which."""

    __slots__ = ("_lane",)

    def __init__(
        self, readers: Sequence[Reader], lane: Callable[[Reader], Iterable[Block | Record]]
    ) -> None:
        super().__init__(readers)
        self._lane = lane

    def items(self) -> Iterator[Block | Record]:
        try:
            for reader in self._readers:
                try:
                    yield from self._lane(reader)
                finally:
                    reader.close()
        except InputError as exc:
            self.error = exc


def parts(
    items: Iterable[Block | Record], *, records: int, size: int = SLICE
) -> Iterator[Part | list[Record]]:
    """Blocks cut into parts of ``size`` rows, and Records in lists of up to ``records``."""
    held: list[Record] = []
    for item in items:
        if isinstance(item, Block):
            if held:
                yield held
                held = []
            for start in range(0, item.count, size):
                yield Part(item, start, min(start + size, item.count))
        else:
            held.append(item)
            if len(held) >= records:
                yield held
                held = []
    if held:
        yield held


def ahead(items: Iterable[T], depth: int = 1) -> Generator[T, None, None]:
    """``items``, made by a thread of their own up to ``depth`` ahead of their taker: the
    parsing and column work of the next block, which releases the GIL, is done while the
    taker works on the last one. Exceptions reach the taker; a taker that stops early
    (an error, ``close``) stops the thread and waits for it, so none outlives its taker."""
    queue: Queue[tuple[bool, object]] = Queue(depth)
    stop = Event()

    def put(entry: tuple[bool, object]) -> None:
        # After ``stop``, the taker empties the queue once: one put more always fits.
        if not stop.is_set():
            queue.put(entry)

    def make() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put((True, item))
        except BaseException as exc:  # handed to the taker, which raises it
            put((False, exc))
        else:
            put((False, None))

    thread = Thread(target=make, name="fast-lane", daemon=True)
    thread.start()
    try:
        while True:
            more, item = queue.get()
            if not more:
                if item is not None:
                    raise item  # type: ignore[misc]
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()
        thread.join()


async def inline(chunks: Iterable[T]) -> AsyncIterator[T]:
    """``chunks``, each made on the event loop when it is taken."""
    for chunk in chunks:
        yield chunk


async def paced(chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    """``chunks``, yielding to the event loop after each, even when the next is ready."""
    async for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)
