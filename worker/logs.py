"""Logging setup: structlog events with stable names, readable on a TTY, JSON lines elsewhere.

Three promises hold whatever goes wrong: every event carries the run id (bound once with
:func:`bind_run`); no secret the process holds reaches a log line (each line is scrubbed
of every value registered with :data:`SECRETS` before it is written, tracebacks included,
and tracebacks never render local variables); and a log that cannot be written (a closed
pipe, a full disk) goes quiet instead of raising, so a signal or a shutdown is never
stopped by a failing write.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

REDACTED: Final = "[redacted]"
# A traceback keeps this many frames at each end: enough to find a bug, never megabytes.
_FRAMES: Final = 20


class Secrets:
    """Every secret value the process holds, so that any text can be scrubbed of them."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            # Very short values would scrub ordinary words; no real secret is that short.
            if len(value) < 4:
                continue
            # As written in JSON too (a log line, an answer that echoes a request body): a
            # quote or a backslash in it is escaped there.
            for form in {value, orjson.dumps(value).decode()[1:-1]}:
                if form not in self._values:
                    self._values.append(form)
        # Longest first, so a secret containing another is scrubbed whole.
        self._values.sort(key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


SECRETS: Final = Secrets()


class GuardedStream:
    """A text stream that scrubs secrets from what is written, and goes quiet for good
    at the first write that fails, instead of raising. Without a stream of its own it
    writes to whatever ``sys.stderr`` is at the time (a live progress display redirects
    it, to print log lines above itself)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.broken = False

    @property
    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._out.write(SECRETS.scrub(text))
            except (OSError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._out.flush()
            except (OSError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        try:
            return self._out.isatty()
        except (OSError, ValueError):
            return False


def _dumps(obj: object, **_: object) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route every event to ``stream`` (stderr by default) at ``level`` and above.

    ``fmt`` is ``console``, ``json`` or ``auto`` (console on a terminal, JSON otherwise).
    """
    out = GuardedStream(stream)
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        transformer = ExceptionDictTransformer(show_locals=False, max_frames=_FRAMES)
        processors.append(structlog.processors.ExceptionRenderer(transformer))
        processors.append(structlog.processors.JSONRenderer(serializer=_dumps))
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def bind_run(run_id: str) -> None:
    """Every event from here on carries ``run_id``."""
    structlog.contextvars.bind_contextvars(run_id=run_id)


@contextlib.contextmanager
def run_bound(run_id: str) -> Iterator[None]:
    """Every event inside carries ``run_id`` (rebinding it inside is allowed); after, the
    context holds what it held before."""
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        yield
