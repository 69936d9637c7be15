"""``plan`` of a large NDJSON file on two cores.

A plan decides each row (reads, decodes and judges it by the reference's rules: the work
of :class:`~worker.fastlane.ndjson.NdjsonBlocks`), then plans it: first-wins dedupe and
batching, which must be done in one place, in input order. Deciding need not be, and it
is most of the work: a file of at least ``SPLIT_BYTES``, on a machine with two cores or
more, is cut into spans of about ``SPAN_BYTES``, each ending where a line starts; a
helper process decides all but every ``MINE``-th span, which this process decides, and
this process plans every span, in order, taking the helper's items as they come.

The helper is this module run by the same Python (``python -m``): the same code, so no
rule has a second copy. Its items come back pickled down a pipe, read by a thread a few
items ahead (:func:`~worker.fastlane.ahead`), so that the helper works while this process
does and waits on it only as far as those few items.

The helper ends where it cannot go on as this process would have: an input that breaks
reaches this process at that place in the input, as InputError, after the items before
it; anything else is a crash, a RuntimeError with what the helper said. This process stops
the helper when it stops, however it stops.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, Final

import orjson

from worker.config import Format
from worker.fastlane import Block, ahead
from worker.fastlane.ndjson import NdjsonBlocks
from worker.intake import Intake
from worker.inventory import (
    ChangedWhileRead,
    Input,
    InputError,
    Reader,
    Record,
    Span,
    collect_less,
)

# Internal switches, for the tests to split a small file; not options.
SPLIT_BYTES: Final = int(os.environ.get("VPC_MEMBERS_LANE_SPLIT") or 0) or 64 << 20
SPAN_BYTES: Final = int(os.environ.get("VPC_MEMBERS_LANE_SPAN") or 0) or 16 << 20
# Every MINE-th span is this process's to decide: it plans the others' rows too.
MINE: Final = 2
# The helper's messages read ahead of this process: each a block at most.
_AHEAD: Final = 4
_LENGTH: Final = struct.Struct("<Q")


def planned(
    reader: Reader,
    intake: Intake,
    *,
    block_bytes: int | None = None,
    least: int = SPLIT_BYTES,
    every: int = SPAN_BYTES,
) -> Iterator[Block | Record]:
    """The items of an opened NDJSON input, for ``plan``, as ``NdjsonBlocks`` gives them:
    with a helper process's when the file has ``least`` bytes or more, in spans of about
    ``every`` (see the module's docstring)."""
    lane = NdjsonBlocks(reader, intake, block_bytes=block_bytes)
    identity = reader.identity()
    large = identity is not None and identity[2] >= least and _cores() > 1
    spans = reader.spans(every) if large else None
    if spans is None:
        yield from lane
        return
    job = {
        "path": reader.input.path,
        "label": reader.input.name,
        "identity": identity,
        "spans": [(s.start, s.stop) for k, s in enumerate(spans) if k % MINE],
        "block": block_bytes,
        "defaults": intake.defaults,
    }
    with _helper(job) as messages:
        line = 1
        for k, span in enumerate(spans):
            if k % MINE == 0:
                yield from lane.items(span._replace(line=line))
                line = _next(reader)
                continue
            for kind, value in messages:
                if kind == "item":
                    yield value
                    continue
                if kind == "lines":  # a block whose lines are read here if need be
                    block, length = value
                    block.data = _Reread(reader.fileno(), block.at, length)
                    yield block
                    continue
                if kind == "end":
                    line = value
                    break
                if kind == "error":
                    raise InputError(*value)
                raise RuntimeError(f"the plan's helper process crashed:\n{value}")


class _Reread:
    """A block's bytes of the input, read again if they are asked for."""

    def __init__(self, fileno: int, at: int, length: int) -> None:
        self._fileno, self._at, self._length = fileno, at, length

    def __iter__(self) -> Iterator[bytes]:
        data = os.pread(self._fileno, self._length, self._at)
        if len(data) != self._length:
            raise ChangedWhileRead("changed while it was read (it is shorter)")
        yield data


def _next(reader: Reader) -> int:
    line = reader.line
    assert line is not None, "a span read"
    return line


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


@contextmanager
def _helper(job: Mapping[str, Any]) -> Iterator[Iterator[tuple[str, Any]]]:
    """The helper process, started on ``job``, as its messages; stopped at the end."""
    with tempfile.TemporaryFile() as errors:
        # This module, by the Python running this one: no input reaches the command.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            # Its own session: a ^C at the terminal is this process's to act on.
            start_new_session=True,
        )
        assert process.stdin is not None and process.stdout is not None
        messages = _or_why(ahead(_messages(process.stdout), _AHEAD), process, errors)
        try:
            process.stdin.write(orjson.dumps(job))
            process.stdin.close()
            yield messages
        finally:
            # Killed first: the thread that reads its messages may be waiting for one.
            if process.poll() is None:
                process.kill()
            messages.close()
            process.wait()
            process.stdout.close()


def _or_why(
    messages: Iterator[tuple[str, Any]], process: subprocess.Popen[bytes], errors: IO[bytes]
) -> Generator[tuple[str, Any], None, None]:
    """The helper's messages; a crash message of why it stopped when it ends without one."""
    yield from messages
    status = process.wait()
    errors.seek(0)
    said = errors.read()[-4000:].decode(errors="replace")
    yield "crash", f"it ended (exit status {status}) before its work was done\n{said}"


def _messages(pipe: IO[bytes]) -> Generator[tuple[str, Any], None, None]:
    while True:
        head = pipe.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack(head)
        data = pipe.read(length)
        if len(data) < length:
            return  # it was stopped
        yield pickle.loads(data)  # noqa: S301 - written by the helper, the same code


# -- the helper -------------------------------------------------------------------------------


def _serve(job: Mapping[str, Any], out: IO[bytes]) -> None:
    def send(kind: str, value: object) -> None:
        data = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_LENGTH.pack(len(data)))
        out.write(data)
        out.flush()

    try:
        reader = Reader(Input(job["path"], Format.NDJSON, False, job["label"]))
        try:
            if list(reader.identity() or ()) != list(job["identity"]):
                raise InputError(
                    reader.input.name,
                    "changed while it was read (it is not the file opened): "
                    "run again on a file that stays as it is",
                )
            lane = NdjsonBlocks(reader, Intake(job["defaults"]), block_bytes=job["block"])
            line, counted = 1, 0
            for start, stop in job["spans"]:
                # The lines of the plan's own spans before this one, counted here: the
                # plan has not read them yet, and this span's rows need their numbers.
                line += _breaks(reader, counted, start)
                for item in lane.items(Span(start, stop, line)):
                    if isinstance(item, Block) and item.raws is None:
                        # Its lines are needed only for a row that loses its dedupe.
                        length = sum(map(len, item.data))
                        item.data = ()
                        send("lines", (item, length))
                    else:
                        send("item", item)
                line, counted = _next(reader), stop
                send("end", line)
        finally:
            reader.close()
    except InputError as exc:
        send("error", (exc.source, exc.reason, exc.line))
    except Exception:
        send("crash", "".join(traceback.format_exc()))


def _breaks(reader: Reader, start: int, stop: int) -> int:
    """The line breaks of the file's bytes from ``start`` to ``stop``."""
    fileno = reader.fileno()
    count = 0
    while start < stop:
        data = os.pread(fileno, min(stop - start, 8 << 20), start)
        if not data:
            break
        count += data.count(b"\n")
        start += len(data)
    return count


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collect_less()
    _serve(orjson.loads(sys.stdin.buffer.read()), sys.stdout.buffer)


if __name__ == "__main__":
    main()
