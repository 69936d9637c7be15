"""The fast lane's NDJSON front end, on msgspec (see :mod:`worker.fastlane`), for ``plan``.

Each line is decoded into the API's fields with their JSON types (ids and text as strings,
numbers as integers, ``is_backup`` as a boolean), at half of ``orjson.loads``' cost; a line
of any other shape goes to the reference reader. msgspec skips the keys it is not asked
for without judging them as strictly as orjson does, so a line is only decoded here when
nothing in it could be judged differently: ASCII (so valid UTF-8), no escape sequence, no
nested value (so no depth to check), no number too long for a double, and no ``outcome``
(a report's lost dedupe, fed back). Rows come in blocks
of lines, decided as CSV blocks are: each distinct channel and each distinct tuple of
member values once, through the reference rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import msgspec

from worker.fastlane import CACHE_MAX, Block, FieldCache
from worker.intake import Intake
from worker.inventory import MAX_CELL_BYTES, Reader, Record, ndjson_record
from worker.members import (
    CHANNEL_FIELDS,
    FEW_VALUED,
    JSON_TYPES,
    MEMBER_FIELDS,
    USABLE_IPV4,
    Channel,
    FieldError,
)

# Lines a block holds: a block's rows are handed on together.
_LINES: Final = 8192
# Where a number past a double's range could be (orjson refuses those, msgspec skips them):
# three patterns with a literal start each, which re looks for far faster than one.
_HUGE_NUMBERS: Final = tuple(
    re.compile(pattern) for pattern in (rb"e[+-]?[0-9]{3}", rb"E[+-]?[0-9]{3}", rb"[0-9]{300}")
)


# The API's fields with the JSON types the rules take, and the one report column that
# changes a row's fate (``outcome``, a lost dedupe fed back): a line with it is left to
# the reference, as is one with a value of any other type. Other keys are skipped.
_Row: Final = msgspec.defstruct(
    "_Row",
    [
        *(
            (name, JSON_TYPES.get(name, str) | None, None)
            for name in (*CHANNEL_FIELDS, *MEMBER_FIELDS)
        ),
        ("outcome", object, None),
    ],
    gc=False,
)


class NdjsonBlocks:
    """The items of one opened NDJSON input: Blocks of the lines decided here (sizes only,
    for ``plan``), and the reference's Records of the others."""

    def __init__(self, reader: Reader, intake: Intake) -> None:
        self.reader = reader
        self.intake = intake
        self.name = reader.input.name
        self.fields = FieldCache()
        # The intake's channels and the field cache's verdicts, per row without a call:
        # both bounded, as theirs are.
        self._channels: dict[tuple[str | None, ...], Channel | FieldError] = {}
        self._sizes: dict[tuple[object, ...], int] = {}
        self._rebuild = partial(_record, self.name)

    def __iter__(self) -> Iterator[Block | Record]:
        decode: Callable[[bytes], Any] = msgspec.json.Decoder(_Row).decode
        failed = (msgspec.DecodeError, msgspec.ValidationError)
        usable = USABLE_IPV4.fullmatch
        huge = [pattern.search for pattern in _HUGE_NUMBERS]
        sizes_seen, channels_seen = self._sizes, self._channels
        name = self.name
        block, fast, channels, hosts, sizes, raws = self._fresh(1)
        for number, raw in self.reader.ndjson_lines():
            if type(raw) is Record:
                if fast:
                    yield self._done(block)
                yield raw
                block, fast, channels, hosts, sizes, raws = self._fresh(number + 1)
                continue
            line: bytes = raw  # type: ignore[assignment]
            if (
                line.isascii()
                and b"\\" not in line
                and line.count(b"{") == 1  # no nesting, so no depth to check
                and b"[" not in line
                and len(line) <= MAX_CELL_BYTES
                and not (huge[0](line) or huge[1](line) or huge[2](line))
            ):
                try:
                    row = decode(line)
                except failed:
                    row = None
                host = row.host if row is not None else None
                if (
                    host is not None
                    and row is not None
                    and row.outcome is None
                    and row.ecs_id is None
                    and row.ecs_name is None
                    and usable(host)
                ):
                    key = (row.port, row.weight, row.is_backup, row.member_group_name, row.status)
                    size = sizes_seen.get(key)
                    if size is None:
                        size = self._size(key)
                    ids = (row.project_id, row.instance_id, row.vpc_channel_id)
                    channel = channels_seen.get(ids)
                    if channel is None:
                        channel = self._channel(ids)
                    if size >= 0 and type(channel) is Channel:
                        fast.append(True)
                        channels.append(channel)
                        hosts.append(host)
                        sizes.append(size + len(host))
                        raws.append(line)
                        if len(fast) >= _LINES:
                            yield self._done(block)
                            block, fast, channels, hosts, sizes, raws = self._fresh(number + 1)
                        continue
            record = ndjson_record(name, number, line)
            if record is None:  # a blank line: no row, and the next block's first line
                if fast:
                    yield self._done(block)
                block, fast, channels, hosts, sizes, raws = self._fresh(number + 1)
                continue
            block.records[len(fast)] = record
            fast.append(False)
            channels.append(None)  # type: ignore[arg-type]
            hosts.append("")
            sizes.append(0)
            raws.append(line)
        if fast:
            yield self._done(block)

    def _fresh(
        self, first: int
    ) -> tuple[Block, list[bool], list[Channel], list[str], list[int], list[bytes]]:
        """An empty block whose first line is ``first``, and the lists its rows go to."""
        fast: list[bool] = []
        channels: list[Channel] = []
        hosts: list[str] = []
        sizes: list[int] = []
        raws: list[bytes] = []
        block = Block(self.name, first, 0, fast, {}, channels, hosts, sizes, raws, self._rebuild)
        return block, fast, channels, hosts, sizes, raws

    def _done(self, block: Block) -> Block:
        """The block, its places sorted by channel when every row is fast (see Block)."""
        assert block.fast is not None
        n = block.count = len(block.fast)
        if block.records:
            return block
        runs: dict[Channel, list[int]] = {}
        for row, channel in enumerate(block.channels):
            runs.setdefault(channel, []).append(row)
        order = block.order = [row for rows in runs.values() for row in rows]
        block.segments = []
        at = 0
        for channel, rows in runs.items():
            block.segments.append((channel, at, at + len(rows)))
            at += len(rows)
        first = block.first_line
        block.lines = [first + row for row in order]
        block.hosts = [block.hosts[row] for row in order]
        block.sizes = [block.sizes[row] for row in order]
        block.channels = []
        block.fast = None
        block.distinct = len(set(block.hosts)) == n
        block.largest = max(block.sizes)
        return block

    def _channel(self, ids: tuple[str | None, str | None, str | None]) -> Channel | FieldError:
        found = self.intake.channel_of(ids)
        if len(self._channels) < CACHE_MAX:
            self._channels[ids] = found
        return found

    def _size(self, key: tuple[object, ...]) -> int:
        """What a row's member fields but the host add to its body, or -1 when one is
        refused."""
        size = len('{"host":""}')
        for name, raw in zip(FEW_VALUED, key, strict=True):
            info = self.fields.info(name, raw)
            if not info.ok:
                size = -1
                break
            size += len(info.fragment)
        if len(self._sizes) < CACHE_MAX:
            self._sizes[key] = size
        return size


def _record(name: str, raw: bytes, line: int) -> Record:
    record = ndjson_record(name, line, raw)
    assert record is not None, "a line with a row"
    return record
