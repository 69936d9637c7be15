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
from collections.abc import Iterator
from functools import partial
from typing import Final

import msgspec

from worker.fastlane import Block, FieldCache
from worker.intake import Intake
from worker.inventory import MAX_CELL_BYTES, Reader, Record, ndjson_record, nested
from worker.members import CHANNEL_FIELDS, USABLE_IPV4, Channel, FieldError

# Lines a block holds: a block's rows are handed on together.
_LINES: Final = 8192
# Where a number past a double's range could be (orjson refuses those, msgspec skips them):
# three patterns with a literal start each, which re looks for far faster than one.
_HUGE_NUMBERS: Final = tuple(
    re.compile(pattern) for pattern in (rb"e[+-]?[0-9]{3}", rb"E[+-]?[0-9]{3}", rb"[0-9]{300}")
)
_MEMBER: Final = ("port", "weight", "is_backup", "member_group_name", "status")


class _Row(msgspec.Struct, gc=False):
    project_id: str | None = None
    instance_id: str | None = None
    vpc_channel_id: str | None = None
    host: str | None = None
    port: int | None = None
    weight: int | None = None
    is_backup: bool | None = None
    member_group_name: str | None = None
    status: int | None = None
    ecs_id: str | None = None
    ecs_name: str | None = None
    # The one report column that changes a row's fate (a lost dedupe, fed back): such a
    # line is left to the reference. The others only name or rename report cells.
    outcome: object = None


class NdjsonBlocks:
    """The items of one opened NDJSON input: Blocks of the lines decided here (sizes only,
    for ``plan``), and the reference's Records of the others."""

    def __init__(self, reader: Reader, intake: Intake) -> None:
        self.reader = reader
        self.intake = intake
        self.name = reader.input.name
        self.fields = FieldCache()
        self._channels: dict[tuple[str | None, ...], Channel | FieldError] = {}
        self._sizes: dict[tuple[object, ...], int] = {}
        self._rebuild = partial(_record, self.name)
        self.fast_rows = 0
        self.slow_rows = 0

    def __iter__(self) -> Iterator[Block | Record]:
        decode = msgspec.json.Decoder(_Row).decode
        failed = (msgspec.DecodeError, msgspec.ValidationError)
        usable = USABLE_IPV4.fullmatch
        name = self.name
        block = self._empty(1)
        for number, raw in self.reader.ndjson_lines():
            if type(raw) is Record:
                if block.count:
                    yield block
                block = self._empty(number + 1)
                yield raw
                continue
            line: bytes = raw  # type: ignore[assignment]
            row = None
            if (
                line.isascii()
                and b"\\" not in line
                and not nested(line)
                and len(line) <= MAX_CELL_BYTES
                and not any(huge.search(line) for huge in _HUGE_NUMBERS)
            ):
                try:
                    row = decode(line)
                except failed:
                    row = None
            size = -1
            channel: Channel | FieldError | None = None
            if row is not None and row.host is not None and usable(row.host):
                size = self._size(row)
                channel = self._channel(row) if size >= 0 else None
            if (
                row is None
                or row.host is None
                or row.outcome is not None
                or not isinstance(channel, Channel)
            ):
                record = ndjson_record(name, number, line)
                if record is None:  # a blank line: no row
                    if block.count:
                        yield block
                    block = self._empty(number + 1)
                    continue
                block.records[block.count] = record
                block.fast.append(False)  # type: ignore[union-attr]
                block.channels.append(None)  # type: ignore[arg-type]
                block.hosts.append("")
                block.sizes.append(0)
                self.slow_rows += 1
            else:
                block.fast.append(True)  # type: ignore[union-attr]
                block.channels.append(channel)
                block.hosts.append(row.host)
                block.sizes.append(size + len(row.host))
                self.fast_rows += 1
            block.raws.append(line)  # type: ignore[union-attr]
            block.count += 1
            if block.count >= _LINES:
                yield block
                block = self._empty(number + 1)
        if block.count:
            yield block

    def _empty(self, first: int) -> Block:
        return Block(self.name, first, 0, [], {}, [], [], [], [], self._rebuild)

    def _channel(self, row: _Row) -> Channel | FieldError:
        key = (row.project_id, row.instance_id, row.vpc_channel_id)
        found = self._channels.get(key)
        if found is None:
            fields = {k: v for k, v in zip(CHANNEL_FIELDS, key, strict=True) if v is not None}
            found = self._channels[key] = self.intake.channel(fields)
        return found

    def _size(self, row: _Row) -> int:
        """What the row's member fields but the host add to its body, or -1 when one is
        refused, or is an ECS field (left to the reference)."""
        if row.ecs_id is not None or row.ecs_name is not None:
            return -1
        key = (row.port, row.weight, row.is_backup, row.member_group_name, row.status)
        size = self._sizes.get(key)
        if size is None:
            size = len('{"host":""}')
            for name, raw in zip(_MEMBER, key, strict=True):
                info = self.fields.info(name, raw)
                if not info.ok:
                    size = -1
                    break
                size += len(info.fragment)
            self._sizes[key] = size
        return size


def _record(name: str, raw: bytes, line: int) -> Record:
    record = ndjson_record(name, line, raw)
    assert record is not None, "a line with a row"
    return record
