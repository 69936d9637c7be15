"""Logging setup: structlog events with stable names, readable on a TTY, JSON lines elsewhere."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
import structlog


def _dumps(obj: object, **_: object) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route every event to ``stream`` (stderr by default) at ``level`` and above.

    ``fmt`` is ``console``, ``json`` or ``auto`` (console on a terminal, JSON otherwise).
    """
    out = stream if stream is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
