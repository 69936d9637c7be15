"""Seeded inventories under bench/work/, generated once and reused while their
parameters (rows, channels, seed, format) stay the same."""

from __future__ import annotations

from pathlib import Path

from bench.generate import stream_csv, stream_ndjson
from bench.procs import WORK

SEED = 1


def inventory(rows: int, channels: int, fmt: str = "csv") -> Path:
    """The path of a ``rows``-row inventory over ``channels`` channels, made if missing.

    Written under a temporary name and renamed, so an interrupted run leaves no half file
    that a later run would take for a whole one."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"inventory-{rows}r-{channels}c-s{SEED}.{fmt}"
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        write = stream_csv if fmt == "csv" else stream_ndjson
        write(partial, rows, channels, SEED)
        partial.rename(path)
    return path
