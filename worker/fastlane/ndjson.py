"""The fast lane's NDJSON front end, on msgspec (see :mod:`worker.fastlane`).

Lines are read a mebibyte at a time. A read is decoded by one call, into the API's fields
with their JSON types (ids and text as strings, numbers as integers, ``is_backup`` as a
boolean) and every other key the input's lines were seen to have, when nothing in it
could be judged differently from ``orjson.loads`` of each line:

- ASCII (so valid UTF-8), no escape sequence, no bracket, and each line starting with
  a brace, so that none is blank: then as many rows as lines means one object a line,
  and the decoder's types, which take no object or array as a value, make each flat,
  with no depth to check;
- no line over ``MAX_CELL_BYTES``, so no cell to clamp;
- every key decoded, none skipped (msgspec would skip a value without judging it as
  orjson does), the user's keys as ``int | float | str | bool | None``: an integer within
  int64 (orjson reads one past 64 bits as a double, and refuses one past a double's
  range, where msgspec would make a Python int: a line with one, even under a key given
  twice, is the reference's), any other number as a double, out of range where orjson
  finds it so.

Any other read is decoded a line at a time by the same rules, and a line they do not
take goes to the reference reader: a line of any other shape, a value of another type,
a key not seen before (learnt then, for the lines after it, unless a row could then
have a report's columns), an ECS field's value or a report's ``outcome`` (a lost dedupe,
fed back). The rows are decided in passes over the
read, as CSV blocks are in columns: each distinct channel and each distinct tuple of
member values once, through the reference rules, and the hosts by the reference's own
usable-IPv4 rule. Consecutive reads whose rows are all fast go to the planner as one
Block.

For ``run`` (``sending``), each fast row also gets its request body and its landed NDJSON
report row but the answer's members (see :func:`worker.reports.landed_lines`), joined from
pieces orjson wrote: the location, the channel's ids, the host, each member field's value
as the reference typed it; then the user's keys. One present user key is written as
orjson writes it, under the name the reference reader gives it; a row with more has them
from the reference reader's own Record, in the line's order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain, repeat
from operator import add, attrgetter
from typing import Annotated, Any, Final, Literal, cast

import msgspec
import orjson

from worker.fastlane import CACHE_MAX, LANE_BLOCK, Block, FieldCache, FieldInfo
from worker.intake import FastEntry, Intake
from worker.inventory import (
    MAX_CELL_BYTES,
    MAX_COLUMNS,
    InputError,
    Lines,
    Reader,
    Record,
    Span,
    name_clash,
    ndjson_record,
)
from worker.members import (
    CHANNEL_FIELDS,
    ECS_FIELDS,
    FEW_VALUED,
    JSON_TYPES,
    MEMBER_FIELDS,
    USABLE_IPV4,
    Channel,
    FieldError,
)
from worker.reports import JSON_ESCAPED, LOCATION_FIELDS, carried, is_report, own_column

# The bytes of a block: big enough that each channel's run in it is long, as the planner
# takes a run at a time; and of a read, decoded and decided at once.
BLOCK_BYTES: Final = LANE_BLOCK or 8 << 20
# For run, whose blocks are decided on the event loop (see runner): a read short enough
# that the loop is held a few milliseconds, not the tens a mebibyte takes.
SEND_BLOCK_BYTES: Final = LANE_BLOCK or 128 << 10
_READ_BYTES: Final = LANE_BLOCK or 1 << 20
_API: Final = (*CHANNEL_FIELDS, *MEMBER_FIELDS)
# A value of any key but the API's, decoded as orjson reads it, or refused; UNSET when the
# line does not have the key (a report row carries a key given as null).
_INT64: Final = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_OTHER: Final = _INT64 | float | str | bool | None | msgspec.UnsetType
# The user's keys learnt per input, at most: a line with others takes the reference.
_KEYS_MAX: Final = MAX_COLUMNS
# The decoded row's fields of the user's keys, in the order they were learnt.
_OWN: Final = tuple(f"k{i}" for i in range(_KEYS_MAX))
_IDS: Final = attrgetter(*CHANNEL_FIELDS)
_VALUES: Final = attrgetter(*FEW_VALUED)
_HOST: Final = attrgetter("host")
# The API's text fields rows are looked up by (the channel's ids, the member group), once
# seen decoded as literals: msgspec then gives back the one str it holds for a value,
# where a str of the row's own costs its making, its hash and its freeing.
_LOOKED_UP: Final = tuple(
    name for name in (*CHANNEL_FIELDS, *FEW_VALUED) if JSON_TYPES.get(name, str) is str
)
# Reads that may bring values not seen yet before the lane stops decoding the seen ones
# as literals (an input sorted by channel brings new ids in most reads).
_MISSES_MAX: Final = 8
# Whether hosts joined by line breaks, and ended by one, are all usable: one match where
# a match a host costs a call each. No decoded host holds a line break: _simple lets no
# escape sequence through, and the decoder refuses a control character in a string.
_USABLE_LINES: Final = re.compile(f"(?:{USABLE_IPV4.pattern}\n)*")
_LINE_NOT_AN_OBJECT: Final = re.compile(rb"\n[^{]")


def _decoder(
    keys: Sequence[str], seen: Mapping[str, Collection[str]] | None = None
) -> msgspec.json.Decoder[Any]:
    """A decoder of a line with the API's fields (an ECS field null) and ``keys``, and no
    other; with ``seen``, one that takes only those values of the fields it names."""
    own = [(_OWN[i], _OTHER, msgspec.UNSET) for i in range(len(keys))]
    row = msgspec.defstruct(
        "_Row",
        [*((name, _typed(name, seen), None) for name in _API), *own],
        rename=dict(zip(_OWN, keys, strict=False)),
        forbid_unknown_fields=True,
        gc=False,
    )
    return msgspec.json.Decoder(row)


def _typed(name: str, seen: Mapping[str, Collection[str]] | None = None) -> Any:
    """An API field's type for the decoder. A fast row has no ECS field: the decoder takes
    one as null or absent only, so that a line giving one is the reference's (as is one
    with a report's ``outcome``, not a field here)."""
    if name in ECS_FIELDS:
        return None
    if seen is not None and seen.get(name):
        return cast(Any, Literal)[tuple(seen[name])] | None
    kind = JSON_TYPES.get(name, str)
    return (_INT64 if kind is int else kind) | None


_EMPTY: Final = _decoder(()).decode(b"{}")


def _simple(data: bytes, short: bool) -> bool:
    """Whether lines joined in ``data``, none over MAX_CELL_BYTES when ``short``, may be
    decoded here (see the module's docstring)."""
    return short and data.isascii() and b"\\" not in data and b"[" not in data


def _objects_a_line(data: bytes) -> bool:
    """Whether each line of ``data`` starts with a brace, so that none is blank:
    ``decode_lines`` passes over a blank line, and reads two objects on one line as two
    rows, so that a read with both could have as many rows as lines, but not one a line.
    With none blank, a line with two objects shows in the count of rows."""
    return data.startswith(b"{") and _LINE_NOT_AN_OBJECT.search(data) is None


@dataclass(frozen=True, slots=True)
class _Fast:
    """Lines read whose rows are all fast: each one's channel (its number in
    ``channels``), host and body size. Sending, each one's member values and report tail
    too (else empty)."""

    read: Lines
    numbers: list[int]
    hosts: list[str]
    sizes: list[int]
    channels: list[Channel | FieldError]
    values: list[tuple[object, ...]]
    tails: list[str]

    def follows(self, other: _Fast) -> bool:
        """Whether these lines come right after ``other``'s, numbered in one table: then
        both can be one Block."""
        return (
            self.read.first == other.read.first + other.read.count
            and self.channels is other.channels
        )


class NdjsonBlocks:
    """The items of one opened NDJSON input: Blocks of the lines decided here (their
    sizes for ``plan``, their entries too when ``sending``), and the reference's Records
    of the others."""

    def __init__(
        self,
        reader: Reader,
        intake: Intake,
        *,
        sending: bool = False,
        block_bytes: int | None = None,
    ) -> None:
        self.reader = reader
        self.intake = intake
        self.name = reader.input.name
        self.sending = sending
        self.block_bytes = block_bytes or (SEND_BLOCK_BYTES if sending else BLOCK_BYTES)
        self.fields = FieldCache()
        self._keys: list[str] = []
        self._decoder = _decoder(())
        # The values of the looked-up fields seen so far, and a decoder that takes only
        # those (as literals); None before a read is decoded, and once given up.
        self._seen: dict[str, set[str]] = {name: set() for name in _LOOKED_UP}
        self._interning: msgspec.json.Decoder[Any] | None = None
        self._misses = 0
        # Reads decoded whole, and of those by the literals' decoder.
        self.whole_reads = 0
        self.interned_reads = 0
        # Sending: the report row's JSON up to the line number, each channel's ids and each
        # distinct tuple of member values' body and report pieces.
        source, line = (orjson.dumps(name).decode() for name in LOCATION_FIELDS)
        self._location = f"{{{source}:{orjson.dumps(self.name).decode()},{line}:"
        self._ids: dict[Channel, str] = {}
        self._pieces: dict[tuple[object, ...], tuple[str, str]] = {}
        # Each distinct (project, instance, channel) ids' number, in order of first sight,
        # and its channel as the intake reads it; each distinct tuple of member values'
        # body size. Both bounded, as the intake's and the field cache's are.
        self._numbers: dict[tuple[str | None, ...], int] = {}
        self._channels: list[Channel | FieldError] = []
        self._index: dict[Channel | FieldError, int] = {}
        # The numbers of the ids that name no channel (a FieldError).
        self._refused: set[int] = set()
        self._sizes: dict[tuple[object, ...], int] = {}
        self._rebuild = partial(_record, self.name)

    def __iter__(self) -> Iterator[Block | Record]:
        return self.items()

    def items(self, span: Span | None = None) -> Iterator[Block | Record]:
        """The items of the input's lines (of ``span`` only, when given: one call a span,
        each span's items whole before the next)."""
        # Lines are decoded a read at a time, which keeps each pass over their rows in
        # the cache; consecutive reads of fast rows are handed on as one block, whose
        # channel runs are longer.
        held: list[_Fast] = []
        size = 0
        try:
            for item in self._decided(span):
                if held and not (isinstance(item, _Fast) and item.follows(held[-1])):
                    yield self._block(held)
                    held, size = [], 0
                if not isinstance(item, _Fast):
                    yield item
                    continue
                held.append(item)
                size += len(item.read.data)
                if size >= self.block_bytes:
                    yield self._block(held)
                    held, size = [], 0
        except InputError:
            # The input broke after these lines, which were read whole: they are rows.
            if held:
                yield self._block(held)
            raise
        if held:
            yield self._block(held)

    def _decided(self, span: Span | None) -> Iterator[_Fast | Block | Record]:
        """The input's items: the lines read, decided, and the reference's Records."""
        for item in self.reader.ndjson_blocks(min(_READ_BYTES, self.block_bytes), span):
            if isinstance(item, Record):
                yield item
            else:
                yield from self._parts(item)

    # -- decoding ---------------------------------------------------------------------------

    def _parts(self, read: Lines) -> Iterator[_Fast | Block]:
        """The lines read, decided: one part, or one between each two blank lines (which
        have no row)."""
        rows = self._whole(read)
        if rows is not None:
            yield self._decide(rows, read)
            return
        first, lines, ats = read.first, read.lines, read.ats()
        rows = []
        start = 0
        for i, line in enumerate(lines):
            simple = _simple(line, len(line) <= MAX_CELL_BYTES)
            row = self._decode("decode", line, line) if simple else None
            if row is None and (line.isspace() or not line):
                if rows:
                    yield self._decide(rows, Lines.of(first + start, lines[start:i], ats[start]))
                    rows = []
                start = i + 1
                continue
            rows.append(row if row is not None else _EMPTY)
        if rows:
            yield self._decide(rows, Lines.of(first + start, lines[start:], ats[start]))

    def _whole(self, read: Lines) -> list[Any] | None:
        """Each line's row, decoded by one call from the lines joined; None unless every
        line is taken so."""
        data = read.data
        if not _simple(data, read.within(MAX_CELL_BYTES)) or not _objects_a_line(data):
            return None
        rows = self._interned(data)
        if rows is not None:
            self.interned_reads += 1
        else:
            rows = self._decode("decode_lines", data, data[: data.find(b"\n") + 1 or None])
            if rows is not None:
                self._see(rows)
        if rows is None or len(rows) != read.count:
            return None
        self.whole_reads += 1
        return rows

    def _interned(self, data: bytes) -> list[Any] | None:
        """The lines of ``data`` decoded with the looked-up values as literals; None when
        there is no such decoder, or it refuses them (a value not seen, or any other)."""
        if self._interning is None:
            return None
        try:
            rows: list[Any] = self._interning.decode_lines(data)
        except msgspec.DecodeError:
            return None
        return rows

    def _see(self, rows: list[Any]) -> None:
        """Learn the looked-up values of rows the literals' decoder did not take."""
        if self._misses >= _MISSES_MAX:
            return  # given up
        new = False
        for name in _LOOKED_UP:
            seen = self._seen[name]
            before = len(seen)
            seen.update(value for value in set(map(attrgetter(name), rows)) if value is not None)
            new = new or len(seen) != before
        if not new:
            return
        if self._interning is not None:
            self._misses += 1
        if self._misses >= _MISSES_MAX or any(len(s) > CACHE_MAX for s in self._seen.values()):
            self._misses, self._interning = _MISSES_MAX, None
        else:
            self._interning = _decoder(self._keys, self._seen)

    def _decode(self, how: str, data: bytes, line: bytes) -> Any | None:
        """The decoder's ``how`` of ``data``; None when it refuses it. A refusal for a
        key not known yet (most often) learns the keys of ``line``, and tries again."""
        try:
            return getattr(self._decoder, how)(data)
        except msgspec.ValidationError:  # a value of another type, or a key not known
            if not self._learn(line):
                return None
        except msgspec.DecodeError:
            return None
        try:
            return getattr(self._decoder, how)(data)
        except msgspec.DecodeError:
            return None

    def _learn(self, line: bytes) -> bool:
        """Whether the line has keys not known yet, now known (up to a bound)."""
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        if type(value) is not dict:
            return False
        known = {*_API, "outcome", *self._keys}
        new = [key for key in value if key not in known]
        if not new or len(self._keys) + len(new) > _KEYS_MAX:
            return False
        # Keys reported under one name (source and user.source) are the reference's to
        # refuse; keys with which a row could be a report fed back, the reference's to read
        # as one (they keep their names, and a spilt cell refuses the row).
        keys = [*self._keys, *new]
        if name_clash(keys, [own_column(key) for key in keys]) is not None or is_report(
            [*_API, *keys]
        ):
            return False
        self._keys = keys
        self._decoder = _decoder(self._keys)
        if self._interning is not None:
            self._interning = _decoder(self._keys, self._seen)
        return True

    # -- deciding ---------------------------------------------------------------------------

    def _decide(self, rows: list[Any], read: Lines) -> _Fast | Block:
        """Decoded rows (``_EMPTY`` for a line the reference reads) decided: their
        columns when every row is fast, else their Block."""
        found = list(map(self._numbers.get, map(_IDS, rows)))
        channels, refused = self._channels, self._refused
        if None in found:
            channels, refused = self._number(rows, found)
        numbers = cast(list[int], found)
        values: list[tuple[object, ...]] = list(map(_VALUES, rows))
        found = list(map(self._sizes.get, values))
        if None in found:
            self._size(values, found)
        sizes = cast(list[int], found)
        hosts: list[str] = list(map(_HOST, rows))
        if (
            None in hosts
            or -1 in sizes
            or (refused and not refused.isdisjoint(numbers))
            or not _USABLE_LINES.fullmatch("\n".join(hosts) + "\n")
        ):
            return self._mixed(
                rows,
                read.lines,
                read.first,
                cast(list[Channel], [channels[c] for c in numbers]),
                sizes,
                values,
            )
        sizes = list(map(add, sizes, map(len, hosts)))
        tails: list[str] = []
        if self.sending:
            tails = self._tails(rows, read.lines, range(read.first, read.first + len(rows)))
        else:
            values = []
        return _Fast(read, numbers, hosts, sizes, channels, values, tails)

    def _block(self, parts: list[_Fast]) -> Block:
        """The Block of consecutive parts of fast rows, sharing a channel table."""
        first = parts[0].read.first
        numbers = list(chain.from_iterable(part.numbers for part in parts))
        hosts = list(chain.from_iterable(part.hosts for part in parts))
        sizes = list(chain.from_iterable(part.sizes for part in parts))
        channels = parts[0].channels
        n = len(numbers)
        # Planning, a row's line is split off only if a row loses its dedupe; sending,
        # each one's is part of its entry.
        raws = list(chain.from_iterable(p.read.lines for p in parts)) if self.sending else None
        data = [part.read.data for part in parts]
        block = Block(
            self.name, first, n, None, {}, [], [], [], raws, self._rebuild, data, parts[0].read.at
        )
        # Places sorted by channel, stably, channels in order of first sight: a planner
        # counts them in that order, as the reference would.
        order = block.order = sorted(range(n), key=numbers.__getitem__)
        block.segments = []
        at = 0
        for number, count in sorted(Counter(numbers).items()):
            block.segments.append((cast(Channel, channels[number]), at, at + count))
            at += count
        block.lines = list(map(add, order, repeat(first)))
        block.hosts = list(map(hosts.__getitem__, order))
        block.sizes = list(map(sizes.__getitem__, order))
        block.largest = max(sizes)
        if raws is not None:
            values = list(chain.from_iterable(part.values for part in parts))
            tails = list(chain.from_iterable(part.tails for part in parts))
            in_order = [c for c, a, b in block.segments for _ in range(b - a)]
            block.entries = self._entries(
                in_order,
                block.hosts,
                [values[row] for row in order],
                [tails[row] for row in order],
                [raws[row] for row in order],
                block.lines,
            )
        return block

    def _mixed(
        self,
        rows: list[Any],
        lines: list[bytes],
        first: int,
        channels: list[Channel],
        sizes: list[int],
        values: list[tuple[object, ...]],
    ) -> Block:
        """The Block of rows some of which the reference is to decide, in input order."""
        fast: list[bool] = []
        hosts: list[str] = []
        records: dict[int, Record] = {}
        usable = USABLE_IPV4.fullmatch
        for i, row in enumerate(rows):
            host = row.host
            ok = (
                host is not None
                and sizes[i] >= 0
                and type(channels[i]) is Channel  # a FieldError where refused
                and usable(host) is not None
            )
            fast.append(ok)
            if ok:
                hosts.append(host)
                sizes[i] += len(host)
            else:
                hosts.append("")
                records[i] = _record(self.name, lines[i], first + i)
        block = Block(
            self.name, first, len(rows), fast, records, channels, hosts, sizes, lines, self._rebuild
        )
        if self.sending:
            taken = [i for i, ok in enumerate(fast) if ok]
            raws = [lines[i] for i in taken]
            numbers = [first + i for i in taken]
            made = self._entries(
                [channels[i] for i in taken],
                [hosts[i] for i in taken],
                [values[i] for i in taken],
                self._tails([rows[i] for i in taken], raws, numbers),
                raws,
                numbers,
            )
            entries: list[FastEntry | None] = [None] * len(rows)
            for i, entry in zip(taken, made, strict=True):
                entries[i] = entry
            block.entries = entries
        return block

    # -- sending ---------------------------------------------------------------------------

    def _entries(
        self,
        channels: list[Channel],
        hosts: list[str],
        values: list[tuple[object, ...]],
        tails: list[str],
        raws: list[bytes],
        lines: list[int],
    ) -> list[FastEntry | None]:
        """The entries of fast rows: each one's request body and report row (see the
        module's docstring)."""
        location, rebuild = self._location, self._rebuild
        # Looked up a row at a time in the caches, and made (a call a row) only when one
        # is missing from them.
        ids = list(map(self._ids.get, channels))
        if None in ids:
            ids = list(map(self._channel_ids, channels))
        pieces = list(map(self._pieces.get, values))
        if None in pieces:
            pieces = list(map(self._member, values))
        return [
            FastEntry(
                channel,
                host,
                f'{{"host":"{host}"{body}}}'.encode(),
                f'{location}{line}{held},"host":"{host}"{report}',
                tail,
                raw,
                line,
                rebuild,
            )
            for channel, host, held, (body, report), tail, raw, line in zip(
                channels, hosts, ids, pieces, tails, raws, lines, strict=True
            )
        ]

    def _channel_ids(self, channel: Channel) -> str:
        """A channel's ids as a report row has them: ``,"project_id":"p1",...``."""
        found = self._ids.get(channel)
        if found is None:
            found = "".join(
                f",{orjson.dumps(name).decode()}:{orjson.dumps(value).decode()}"
                for name, value in zip(CHANNEL_FIELDS, channel, strict=True)
            )
            if len(self._ids) < CACHE_MAX:
                self._ids[channel] = found
        return found

    def _member(self, values: tuple[object, ...]) -> tuple[str, str]:
        """What accepted member values (``FEW_VALUED``) add to a request body, and the
        member's fields after the host in a report row (an ECS field, which a fast row
        lacks, as null)."""
        found = self._pieces.get(values)
        if found is None:
            infos = self._infos(values)
            assert infos is not None, "a fast row's member values are accepted"
            judged = dict(zip(FEW_VALUED, infos, strict=True))
            body = "".join(info.fragment for info in infos)
            report = "".join(
                f",{orjson.dumps(name).decode()}:{judged[name].json if name in judged else 'null'}"
                for name in MEMBER_FIELDS[1:]
            )
            found = (body, report)
            if len(self._pieces) < CACHE_MAX:
                self._pieces[values] = found
        return found

    def _infos(self, values: tuple[object, ...]) -> list[FieldInfo] | None:
        """The reference's verdict on each member value, in ``FEW_VALUED`` order; None
        when it refuses one."""
        infos = []
        for name, raw in zip(FEW_VALUED, values, strict=True):
            info = self.fields.info(name, raw)
            if not info.ok:
                return None
            infos.append(info)
        return infos

    def _tails(self, rows: list[Any], raws: list[bytes], lines: Sequence[int]) -> list[str]:
        """Each fast row's report tail: its user's keys, then the closing brace."""
        tails = ["}"] * len(rows)
        if not self._keys:
            return tails
        names = [f",{orjson.dumps(own_column(key)).decode()}:" for key in self._keys]
        own = _OWN[: len(names)]
        unset = msgspec.UNSET
        if len(names) == 1:
            # One key, given as text that needs no escape in every row: each tail is
            # joined as orjson would write it.
            values: list[Any] = list(map(getattr, rows, repeat(own[0]), repeat(unset)))
            if set(map(type, values)) == {str} and not JSON_ESCAPED.search("".join(values)):
                return [f'{names[0]}"{value}"}}' for value in values]
        for i, row in enumerate(rows):
            # A row decoded before a key was learnt has no field for it.
            given = [
                (n, value)
                for n, name in enumerate(own)
                if (value := getattr(row, name, unset)) is not unset
            ]
            if len(given) == 1:
                n, value = given[0]
                tails[i] = f"{names[n]}{orjson.dumps(value).decode()}}}"
            elif given:
                # In the order of the line, which the decoded row does not keep.
                fields = _record(self.name, raws[i], lines[i]).fields
                tails[i] = "," + orjson.dumps(carried(fields)).decode()[1:]
        return tails

    def _number(
        self, rows: list[Any], numbers: list[int | None]
    ) -> tuple[list[Channel | FieldError], set[int]]:
        """Fill in the numbers of ids not seen before, in row order; the channel of each
        number, and the numbers of ids refused. Ids that name one channel (" c1 " and
        "c1") share its number. Past the bound, new ones are numbered for this block
        only."""
        known, index, channels, refused = self._numbers, self._index, self._channels, self._refused
        if len(known) >= CACHE_MAX or len(channels) >= CACHE_MAX:
            known, index, channels, refused = dict(known), dict(index), list(channels), set(refused)
        for i, number in enumerate(numbers):
            if number is None:
                ids = _IDS(rows[i])
                number = known.get(ids)
                if number is None:
                    found = self.intake.channel_of(ids)
                    number = known[ids] = index.setdefault(found, len(channels))
                    if number == len(channels):
                        channels.append(found)
                        if type(found) is not Channel:
                            refused.add(number)
                numbers[i] = number
        return channels, refused

    def _size(self, values: list[tuple[object, ...]], sizes: list[int | None]) -> None:
        """Fill in what the member fields but the host add to a body (-1 when one is
        refused) for value tuples not seen before."""
        known = self._sizes
        for i, size in enumerate(sizes):
            if size is not None:
                continue
            key = values[i]
            size = known.get(key)
            if size is None:
                infos = self._infos(key)
                size = -1
                if infos is not None:
                    size = len('{"host":""}') + sum(info.size for info in infos)
                if len(known) < CACHE_MAX:
                    known[key] = size
            sizes[i] = size


def _record(name: str, raw: bytes, line: int) -> Record:
    record = ndjson_record(name, line, raw)
    assert record is not None, "a line with a row"
    return record
