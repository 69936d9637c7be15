"""What a person sees: live progress while a run goes, and the tables at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Final

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.limits import RateLimiter
from worker.outcomes import Outcome
from worker.pipeline import Migration, Plan

log = structlog.get_logger("vpc_members")

PROGRESS_EVERY: Final = 10.0
_PLAN_ROWS: Final = 40


class Display:
    """Progress for ``mode``: ``bar`` (a live line on stderr), ``events`` (a ``progress``
    event every 10 s), ``off``, or ``auto`` (bar on a terminal, events otherwise)."""

    def __init__(self, mode: str, migration: Migration, limiter: RateLimiter) -> None:
        console = Console(stderr=True)
        if mode == "auto":
            mode = "bar" if console.is_terminal else "events"
        self._mode = mode
        self._migration = migration
        self._limiter = limiter
        self._console = console
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Display:
        if self._mode == "bar":
            self._live = Live(
                console=self._console,
                refresh_per_second=4,
                transient=True,
                get_renderable=self._render,
            )
            self._live.start()
        elif self._mode == "events":
            self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
        if self._task is not None:
            self._task.cancel()

    def snapshot(self) -> dict[str, object]:
        migration = self._migration
        tally = migration.ledger.tally
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return {
            "rows_read": migration.rows_read,
            "landed": tally[Outcome.SUCCEEDED],
            "duplicate": tally[Outcome.DUPLICATE],
            "errors": tally.total - tally[Outcome.SUCCEEDED] - tally[Outcome.DUPLICATE],
            "requests": migration.requests.sent,
            "requests_per_second": round(migration.requests.sent / elapsed, 2),
            "effective_rate": round(self._limiter.effective, 2),
        }

    def _render(self) -> Text:
        s = self.snapshot()
        return Text(
            f"read {s['rows_read']:,}  landed {s['landed']:,}  duplicate {s['duplicate']:,}  "
            f"errors {s['errors']:,}  requests {s['requests']:,} "
            f"({s['requests_per_second']}/s, limit {s['effective_rate']}/s)"
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            log.info("progress", **self.snapshot())


def _stdout() -> Console:
    # Off a terminal rich would wrap at 80 columns, cutting channel ids and paths that
    # scripts and logs need whole.
    console = Console()
    return console if console.is_terminal else Console(width=200)


def print_summary(summary: Mapping[str, object], run_dir: Path) -> None:
    console = _stdout()
    rows = summary["rows"]
    requests = summary["requests"]
    rate = summary["rate"]
    assert isinstance(rows, Mapping) and isinstance(requests, Mapping) and isinstance(rate, Mapping)
    table = Table(title=f"run {summary['run_id']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name in ("total", *(o.value for o in Outcome)):
        table.add_row(f"rows {name}", f"{rows[name]:,}")
    table.add_row("requests sent", f"{requests['sent']:,}")
    table.add_row("requests retried", f"{requests['retried']:,}")
    table.add_row("batches split", f"{requests['split']:,}")
    table.add_row(
        "answers", ", ".join(f"{k}: {v}" for k, v in requests["by_status"].items()) or "-"
    )
    table.add_row("rate limit / achieved", f"{rate['configured']} / {rate['achieved']} per s")
    table.add_row("elapsed", f"{summary['elapsed_seconds']} s")
    if summary.get("stop_reason"):
        table.add_row("stopped", str(summary["stop_reason"]))
    if summary.get("input_error"):
        table.add_row("input error", str(summary["input_error"]))
    table.add_row("exit code", str(summary["exit_code"]))
    console.print(table)
    _print_paths(console, run_dir)


def print_plan(plan: Plan, run_dir: Path) -> None:
    console = _stdout()
    table = Table(title="plan", show_footer=True)
    table.add_column("channel (project/instance/channel)", footer="total")
    totals = {"members": 0, "duplicates": 0, "invalid": 0, "requests": 0}
    for counts in plan.channels.values():
        for name in totals:
            totals[name] += getattr(counts, name)
    for name in totals:
        table.add_column(name, justify="right", footer=f"{totals[name]:,}")
    ordered = sorted(plan.channels.items(), key=lambda item: str(item[0] or ""))
    for channel, counts in ordered[:_PLAN_ROWS]:
        table.add_row(
            str(channel) if channel is not None else "(no valid channel)",
            *(f"{getattr(counts, name):,}" for name in totals),
        )
    if len(ordered) > _PLAN_ROWS:
        table.add_row(f"... and {len(ordered) - _PLAN_ROWS:,} more channels", "", "", "", "")
    console.print(table)
    console.print(f"{plan.rows:,} rows read; a run would send {plan.requests:,} requests.")
    _print_paths(console, run_dir)


def _print_paths(console: Console, run_dir: Path) -> None:
    console.print(f"reports: {run_dir}/", soft_wrap=True, highlight=False)
    for path in sorted(run_dir.iterdir()):
        console.print(f"  {path}", soft_wrap=True, highlight=False)
