"""One row per figure, printed as one table and written to bench/results.json."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results.json"

PASS, SHORT, PEER, INFO = "pass", "short", "peer", "info"


@dataclass(frozen=True, slots=True)
class Row:
    """``verdict`` is pass/short for our figures, peer for a compared client, info for a
    figure with no target. ``data`` holds the raw numbers behind the text."""

    target: str
    case: str
    figure: str
    baseline: str
    goal: str
    verdict: str
    data: dict[str, object] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    return PASS if ok else SHORT


def table(rows: list[Row], title: str) -> Table:
    grid = Table(title=title, show_lines=True)
    for name in ("target", "case", "figure", "baseline (same run)", "goal", "result"):
        grid.add_column(name, overflow="fold")
    style = {PASS: "green", SHORT: "bold red", PEER: "dim", INFO: "cyan"}
    for row in rows:
        mark = f"[{style[row.verdict]}]{row.verdict}[/]"
        grid.add_row(row.target, row.case, row.figure, row.baseline, row.goal, mark)
    return grid


def show(rows: list[Row], title: str) -> None:
    Console(width=200).print(table(rows, title))


def save(rows: list[Row], mode: str, elapsed: float) -> None:
    document = {
        "mode": mode,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_seconds": round(elapsed, 1),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "rows": [asdict(row) for row in rows],
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
