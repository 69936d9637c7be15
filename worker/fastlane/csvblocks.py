"""The fast lane's CSV front end, on pyarrow (see :mod:`worker.fastlane`).

A file is read in blocks of whole lines. A block is *simple* when it holds no quote, no
NUL, no blank line and no lone carriage return (CRLF throughout is fine), and pyarrow,
quoting off, reads it as valid UTF-8 with the header's width on every line: then each line
is one record, line numbers follow one another, and the cells between commas are exactly
those ``csv.reader`` gives. The rows of a simple block are decided in columns; any other
block is read by the reference reader, from its first line, which is where a record begins
(a block that ends inside a quoted cell is read on to the end of the record). Only a record
longer than a few blocks sends the rest of the file to the reference reader at once, which
reads it in bounded memory.
"""

from __future__ import annotations

import os

# pyarrow's default allocator (mimalloc) keeps freed blocks for later: 55 MB of a 1M-row
# plan, which must fit in 300. Where jemalloc is there (below) it is used instead: as
# small, and faster; elsewhere mimalloc is told to give memory back at once. These must be
# set before pyarrow is first imported, or they come too late.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")

import codecs
import contextlib
import functools
import io
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import repeat
from typing import IO, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from worker.fastlane import (
    LANE_BLOCK,
    Block,
    FieldCache,
    rebuilder,
    reference_records,
)
from worker.intake import FastEntry, Intake
from worker.inventory import (
    MAX_CELL_BYTES,
    MAX_ROW_BYTES,
    InputError,
    Reader,
    Record,
    describe,
)
from worker.members import (
    CHANNEL_FIELDS,
    FEW_VALUED,
    MEMBER_FIELDS,
    UNUSABLE_IPV4_PREFIXES,
    USABLE_IPV4_QUAD,
    Channel,
    FieldError,
)
from worker.reports import FORMULA_CHARS, LANDED_COLUMNS, csv_cell

with contextlib.suppress(NotImplementedError):  # a build without jemalloc (Windows)
    pa.set_memory_pool(pa.jemalloc_memory_pool())

# For plan, 3 MiB: each block's channel runs long enough that a run costs little per row,
# and with two blocks decided at once the peak RSS of a 1M-row plan stays near 270 MB. For
# run, 1 MiB: a block's columns
# become Python objects in C calls that hold the GIL as long as the block is big, and the
# event loop must not wait that long. LANE_BLOCK sets both.
BLOCK_BYTES: Final = LANE_BLOCK or 3 << 20
SEND_BLOCK_BYTES: Final = LANE_BLOCK or 1 << 20
_ECS: Final = ("ecs_id", "ecs_name")
_QUAD: Final = f"^{USABLE_IPV4_QUAD}$"
_UNFINISHED: Final = "CSV syntax: unexpected end of data"


class CsvBlocks:
    """The items of one opened CSV input: decided Blocks, and Records from the reference.

    Parameters:
        reader: the input, its header read.
        intake: whose channel rule, and whose dedupe, the rows go by.
        extra: for rows to send (``run``), the report's user columns, which landed rows
            end with: fast rows then have their entries; None for ``plan``, which only
            needs their sizes.
    """

    def __init__(
        self,
        reader: Reader,
        intake: Intake,
        *,
        extra: Sequence[str] | None = None,
        block_bytes: int | None = None,
    ) -> None:
        self.reader = reader
        self.intake = intake
        self.name = reader.input.name
        self.columns = reader.columns
        self.extra = tuple(extra) if extra is not None else None
        self.block_bytes = block_bytes or (BLOCK_BYTES if extra is None else SEND_BLOCK_BYTES)
        # A block that ends inside a record grows by a block at a time up to this; a record
        # longer than that is left to the reference reader, with the rest of the file.
        self._longest = 2 * MAX_ROW_BYTES + 2 * self.block_bytes
        self.fields = FieldCache()
        self._rebuild = rebuilder(reader)
        source = csv_cell(self.name)
        self._source: str | None = None if _needs_quotes(source) else source
        self.fast_rows = 0
        self.slow_rows = 0
        self.reference_blocks = 0
        self.fallback_at: int | None = None

    def __iter__(self) -> Iterator[Block | Record]:
        for item in self._items():
            if isinstance(item, Block):
                self.fast_rows += item.count - len(item.records)
                self.slow_rows += len(item.records)
            else:
                self.slow_rows += 1
            yield item

    def _items(self) -> Iterator[Block | Record]:
        # With one column, pyarrow would read a blank line as a cell the reference skips;
        # landed rows of a file whose name needs quoting cannot be joined from cells; and
        # only a row with a host address is ever fast.
        simple = (
            len(self.columns) > 1
            and "host" in self.columns
            and not (self.extra is not None and self._source is None)
        )
        binary = self.reader.rows_binary() if simple else None
        if binary is None:
            yield from self.reader
            return
        line = self.reader.lines_read + 1
        pending = b""
        ended = False
        broken: InputError | None = None
        # plan decides blocks in two threads: parsing and the column work release the GIL.
        # run has one thread for it already, and its event loop needs the GIL most.
        pool = ThreadPoolExecutor(2, "fast-lane") if self.extra is None else None
        ahead: deque[Future[list[Block | Record]]] = deque()
        try:
            while True:
                pieces = [pending]
                if not ended:
                    try:
                        ended = _read(binary, self.block_bytes, pieces)
                    except (EOFError, OSError, zlib.error) as exc:
                        # As the reference reader would: every whole line read is a row, and
                        # the input breaks at the line that could not be read to its end.
                        broken = InputError(self.name, describe(exc))
                        ended = True
                data = b"".join(pieces)
                if broken is not None:
                    data = data[: data.rfind(b"\n") + 1]
                if not data:
                    break
                cut = len(data) if ended else data.rfind(b"\n") + 1
                if cut == 0:
                    if len(data) > self._longest:
                        while ahead:  # the blocks before it come first
                            yield from ahead.popleft().result()
                        yield from self._rest(data, binary, line)
                        return
                    pending = data
                    continue
                block, pending = data[:cut], data[cut:]
                if pool is not None and _one_line_a_record(block):
                    ahead.append(pool.submit(self._decided, block, line))
                    line += block.count(b"\n") + (not block.endswith(b"\n"))
                    while len(ahead) > 1:
                        yield from ahead.popleft().result()
                    continue
                while ahead:
                    yield from ahead.popleft().result()
                parsed = self._parse(block)
                if parsed is not None:
                    yield self._decide(*parsed, line)
                    line += parsed[0].num_rows
                    continue
                read = self._reference(block, line, ended)
                if read is None:  # the block ends inside a quoted cell: read on
                    if len(data) > self._longest:
                        yield from self._rest(data, binary, line)
                        return
                    pending = data
                    continue
                records, lines, error = read
                yield from records
                if error is not None:
                    if broken is not None and error.reason.startswith(_UNFINISHED):
                        raise InputError(self.name, broken.reason, error.line)
                    raise error
                line += lines
            for later in ahead:
                yield from later.result()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        if broken is not None:
            raise InputError(self.name, broken.reason, line)

    def _decided(self, block: bytes, line: int) -> list[Block | Record]:
        """A block whose every line is one record, from line ``line``: decided, or read
        by the reference reader when it is not simple (a ragged row, bad UTF-8)."""
        parsed = self._parse(block)
        if parsed is not None:
            return [self._decide(*parsed, line)]
        read = self._reference(block, line, True)
        assert read is not None, "no quote, so no record longer than its line"
        records, _, error = read
        if error is not None:
            raise error
        return list(records)

    # -- reading --------------------------------------------------------------------------

    def _parse(self, block: bytes) -> tuple[pa.Table, bytes, bytes] | None:
        """The block as a table of text, with the block as read (its line breaks LF) and
        its line break (LF or CRLF), or None when it is not simple."""
        # pyarrow drops a byte-order mark that starts its buffer, which here is a data
        # line's first cell, which the reference reads as it is.
        if b'"' in block or b"\x00" in block or block.startswith(codecs.BOM_UTF8):
            return None
        carriage = block.count(b"\r")
        if carriage:
            if carriage != block.count(b"\r\n") or carriage != block.count(b"\n"):
                return None
            block = block.replace(b"\r\n", b"\n")
        # The reference skips a blank line; pyarrow would make it a row of empty cells.
        if block.startswith(b"\n") or b"\n\n" in block:
            return None
        try:
            table = pacsv.read_csv(
                io.BytesIO(block),
                read_options=pacsv.ReadOptions(
                    column_names=list(self.columns), use_threads=False, block_size=len(block) + 1
                ),
                parse_options=pacsv.ParseOptions(
                    quote_char=False, newlines_in_values=False, ignore_empty_lines=False
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(self.columns, pa.string()),
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=True,
                ),
            )
        except pa.ArrowException:
            return None
        return table, block, b"\r\n" if carriage else b"\n"

    def _reference(
        self, block: bytes, line: int, last: bool
    ) -> tuple[list[Record], int, InputError | None] | None:
        """The reference reader's records of a block that is not simple, the lines it
        spans, and the error that stopped the input in it; None when it ends inside a
        quoted cell and more of the file follows."""
        self.reference_blocks += 1
        reader = Reader.continuing(self.reader, io.BytesIO(block))
        records: list[Record] = []
        try:
            for record in _from_line(reader, line):
                records.append(record)
        except InputError as exc:
            if not last and exc.reason.startswith(_UNFINISHED):
                return None
            return records, 0, exc
        return records, reader.lines_read, None

    def _rest(self, head: bytes, rest: IO[bytes], line: int) -> Iterator[Record]:
        """The reference reader from ``line`` to the end of the input."""
        self.fallback_at = line
        reader = Reader.continuing(self.reader, io.BufferedReader(_Chain(head, rest)))
        yield from _from_line(reader, line)

    # -- deciding -------------------------------------------------------------------------

    def _decide(self, table: pa.Table, block: bytes, ending: bytes, first: int) -> Block:
        n = table.num_rows
        cols = {name: table.column(name).combine_chunks() for name in self.columns}
        channel_index, channels = self._channel_index(cols, n)
        ok = pc.take(
            pa.array([not isinstance(c, FieldError) for c in channels], pa.bool_()),
            channel_index,
        )
        host = cols["host"]  # the lane is not taken without the column
        usable = pc.match_substring_regex(host, _QUAD)
        for prefix in UNUSABLE_IPV4_PREFIXES:
            usable = pc.and_(usable, pc.invert(pc.starts_with(host, prefix)))
        ok = pc.and_(ok, usable)
        sending = self.extra is not None
        sizes = pc.add(pc.binary_length(host), len('{"host":""}'))
        fragments: list[pa.Array] = []
        cells: dict[str, pa.Array] = {}
        for name in FEW_VALUED:
            column = cols.get(name)
            if column is None:
                continue
            encoded = pc.dictionary_encode(column)
            infos = [self.fields.info(name, raw) for raw in encoded.dictionary.to_pylist()]
            indices = encoded.indices
            ok = pc.and_(ok, _per_row(indices, [i.ok for i in infos], pa.bool_()))
            sizes = pc.add(sizes, _per_row(indices, [i.size for i in infos], pa.int64()))
            if sending:
                fragments.append(_per_row(indices, [i.fragment for i in infos]))
                cells[name] = _per_row(indices, [i.cell for i in infos])
        for name in _ECS:
            column = cols.get(name)
            if column is not None:
                ok = pc.and_(ok, pc.equal(pc.binary_length(column), 0))
        for column in cols.values():
            if (pc.max(pc.binary_length(column)).as_py() or 0) > MAX_CELL_BYTES:
                ok = pc.and_(ok, pc.less_equal(pc.binary_length(column), MAX_CELL_BYTES))
        if len(block) > MAX_ROW_BYTES:
            # The reference refuses a record over MAX_ROW_BYTES characters; a line's bytes
            # (its cells, the commas, at most CRLF) are never fewer, so a row within them
            # is within the limit, and any other is left to the reference to judge.
            lengths = (pc.binary_length(column) for column in cols.values())
            line = pc.add(functools.reduce(pc.add, lengths), len(cols) + 1)
            ok = pc.and_(ok, pc.less_equal(line, MAX_ROW_BYTES))
        columns: dict[str, pa.Array] = {"host": host, "size": sizes}
        if sending:
            columns["body"] = pc.binary_join_element_wise(
                '{"host":"', host, '"', *fragments, "}", ""
            ).cast(pa.binary())
            columns["head"] = self._heads(host, cells, channels, channel_index, first, n)
            columns["tail"] = self._tails(cols, n)
        result = Block(self.name, first, n, None, {}, [], [], [], None, self._rebuild, (block,))
        order: pa.Array | None = None
        if pc.all(ok).as_py():
            # Every row fast: its places sorted by channel, stably, for the planner to
            # take each channel's run of rows at once.
            order = pc.array_sort_indices(channel_index)
            counted = pc.value_counts(channel_index)
            per = dict(
                zip(
                    counted.field("values").to_pylist(),
                    counted.field("counts").to_pylist(),
                    strict=True,
                )
            )
            at = 0
            result.segments = []
            for key in sorted(per):
                result.segments.append((channels[key], at, at + per[key]))
                at += per[key]
            result.order = order.to_pylist()
            result.lines = pc.add(order, first).to_pylist()
            result.largest = pc.max(sizes).as_py()
            columns = {name: pc.take(column, order) for name, column in columns.items()}
        else:
            result.fast = ok.to_pylist()
            result.channels = [channels[i] for i in channel_index.to_pylist()]
        result.hosts = columns["host"].to_pylist()
        result.sizes = columns["size"].to_pylist()
        if self.extra is not None:
            rows = result.order if result.order is not None else range(n)
            if result.segments is not None:
                result.channels = [c for c, a, b in result.segments for _ in range(b - a)]
            raws = result.raws = block.split(b"\n")
            result.entries = list(
                map(
                    FastEntry,
                    result.channels,
                    result.hosts,
                    columns["body"].to_pylist(),
                    columns["head"].to_pylist(),
                    columns["tail"].to_pylist(),
                    [raws[row] for row in rows],
                    [first + row for row in rows],
                    repeat(self._rebuild),
                )
            )
        if result.fast is not None:
            slow = [i for i, fast in enumerate(result.fast) if not fast]
            raws = result.raws = result.raws or block.split(b"\n")
            # Each with its own line break, which the reference counts in a row's length:
            # CRLF, or none after a last line without one.
            data = ending.join([raws[i] for i in slow]) + ending
            if slow[-1] == n - 1 and not block.endswith(b"\n"):
                data = data[: -len(ending)]
            lines = [first + i for i in slow]
            for i, record in zip(slow, reference_records(self.reader, data, lines), strict=True):
                result.records[i] = record
        return result

    def _channel_index(
        self, cols: dict[str, pa.Array], n: int
    ) -> tuple[pa.Array, list[Channel | FieldError]]:
        """Each row's index into the distinct channels of the block, and those channels
        as the reference reads them (with the defaults for absent columns)."""
        # Each id column's distinct texts numbered, and the three numbers made into one.
        key: pa.Array = pa.repeat(pa.scalar(0, pa.int64()), n)
        encoded: list[tuple[pa.Array | None, int]] = []
        for name in CHANNEL_FIELDS:
            column = cols.get(name)
            if column is None:
                encoded.append((None, 1))
                continue
            codes = pc.dictionary_encode(column)
            size = len(codes.dictionary)
            encoded.append((codes.dictionary, size))
            key = pc.add(pc.multiply(key, size), pc.cast(codes.indices, pa.int64()))
        distinct = pc.dictionary_encode(key)
        # And back: each distinct number's three texts (None for an absent column).
        number = distinct.dictionary
        ids: list[list[str | None]] = []
        for dictionary, size in reversed(encoded):
            if dictionary is None:
                ids.append([None] * len(number))
            else:
                ids.append(pc.take(dictionary, pc.remainder(number, size)).to_pylist())
            number = pc.divide(number, size)
        # Texts that differ can name one channel (" c1 " and "c1"): one index each channel.
        index: dict[Channel | FieldError, int] = {}
        numbers: list[int] = []
        for triple in zip(*reversed(ids), strict=True):
            found = self.intake.channel_of(triple)
            numbers.append(index.setdefault(found, len(index)))
        return _per_row(distinct.indices, numbers, pa.int64()), list(index)

    def _heads(
        self,
        host: pa.Array,
        cells: dict[str, pa.Array],
        channels: list[Channel | FieldError],
        channel_index: pa.Array,
        first: int,
        n: int,
    ) -> pa.Array:
        """Each row's landed report cells from ``source`` to ``ecs_name``."""
        parts: dict[str, pa.Array] = {
            "source": pa.repeat(self._source, n),
            "line": pc.cast(pc.add(pc.indices_nonzero(pc.is_valid(host)), first), pa.string()),
            "host": host,
            **cells,
        }
        for at, name in enumerate(CHANNEL_FIELDS):
            ids = [csv_cell(c[at]) if isinstance(c, Channel) else "" for c in channels]
            parts[name] = _per_row(channel_index, ids)
        # A member field the file has no column for is an empty cell.
        empty = pa.repeat("", n)
        named = LANDED_COLUMNS[: LANDED_COLUMNS.index(MEMBER_FIELDS[-1]) + 1]
        return pc.binary_join_element_wise(*[parts.get(name, empty) for name in named], ",")

    def _tails(self, cols: dict[str, pa.Array], n: int) -> pa.Array:
        """Each row's cells of the user's columns, each after a comma."""
        assert self.extra is not None
        if not self.extra:
            return pa.repeat("", n)
        empty = pa.repeat("", n)
        columns = [cols.get(name, empty) for name in self.extra]
        tails = pc.binary_join_element_wise("", *columns, ",")
        risky = None
        for column in columns:
            starts = pc.is_in(pc.utf8_slice_codeunits(column, 0, 1), _FORMULA_STARTS)
            risky = starts if risky is None else pc.or_(risky, starts)
        fixes = pc.indices_nonzero(risky).to_pylist()
        if not fixes:
            return tails
        # A cell a spreadsheet would run is written by the reference's own rule.
        texts: list[str] = tails.to_pylist()
        for i in fixes:
            texts[i] = "," + ",".join(csv_cell(column[i].as_py()) for column in columns)
        return pa.array(texts, pa.string())


_FORMULA_STARTS: Final = pa.array(sorted(FORMULA_CHARS), pa.string())


def _read(binary: IO[bytes], size: int, pieces: list[bytes]) -> bool:
    """Read about ``size`` bytes onto ``pieces``; True at the end of the input. Read a
    piece at a time, so that what was read before a read fails is kept."""
    got = 0
    read = binary.read1  # type: ignore[attr-defined]
    while got < size:
        piece: bytes = read(size - got)
        if not piece:
            return True
        pieces.append(piece)
        got += len(piece)
    return False


def _from_line(reader: Reader, line: int) -> Iterator[Record]:
    """The records of ``reader``, which starts at line ``line`` of the input, numbered as
    lines of the input; so is the line of an InputError it raises."""
    offset = line - 1
    try:
        for record in reader:
            record.line += offset
            yield record
    except InputError as exc:
        where = exc.line + offset if exc.line is not None else None
        raise InputError(exc.source, exc.reason, where) from exc


def _per_row(
    indices: pa.Array, values: Sequence[object], kind: pa.DataType | None = None
) -> pa.Array:
    """``values[indices[i]]`` for every row."""
    return pc.take(pa.array(values, kind or pa.string()), indices)


def _one_line_a_record(block: bytes) -> bool:
    """Whether every line of ``block`` is one record (or none, when blank): no quote to
    go on over a line break, no lone carriage return to end one inside a line."""
    return b'"' not in block and block.count(b"\r") == block.count(b"\r\n")


def _needs_quotes(cell: str) -> bool:
    return any(char in cell for char in ',"\r\n')


class _Chain(io.RawIOBase):
    """``head``, then the rest of a stream, as one."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
