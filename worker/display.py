"""What a person sees: live progress while a run goes, and the tables at the end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

import structlog
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.exits import ExitCode
from worker.outcomes import Action, Fate, Outcome

if TYPE_CHECKING:
    from worker.driver import Driver
    from worker.planning import Plan
    from worker.runner import Summary

log = structlog.get_logger("vpc_members")

PROGRESS_EVERY: Final = 10.0
_PLAN_ROWS: Final = 40


class _Console(Console):
    """A console that goes quiet when its reader is gone (rich's own exits the process
    with status 1, which would replace the run's exit code)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class Display:
    """Progress for ``mode``: ``bar`` (a live line on stderr, log lines printed above it),
    ``events`` (a ``progress`` event every 10 s), ``off``, or ``auto`` (bar on a terminal,
    events otherwise)."""

    def __init__(
        self, mode: str, driver: Driver, read: Callable[[], float | None] = lambda: None
    ) -> None:
        console = _Console(stderr=True)
        if mode == "auto":
            mode = "bar" if console.is_terminal else "events"
        self._mode = mode
        self._driver = driver
        self._read = read
        self._console = console
        self._live: Live | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Display:
        if self._mode == "bar":
            # Log lines written to stderr meanwhile are printed above the live line, never
            # through it (the log's stream looks up sys.stderr at each write).
            self._live = Live(
                console=self._console,
                refresh_per_second=4,
                transient=True,
                get_renderable=self._render,
                redirect_stderr=True,
            )
            self._live.start()
        elif self._mode == "events":
            self._driver.every(PROGRESS_EVERY, self._progress)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            with contextlib.suppress(OSError, ValueError):
                self._live.stop()

    def snapshot(self) -> dict[str, object]:
        driver = self._driver
        tally = driver.ledger.tally
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done = tally.total
        rate = done / elapsed
        # The share of the work done: of the input read (by its bytes, when its size is
        # known), the rows already settled.
        read = self._read()
        share = (read if read is not None else 1.0) * done / max(driver.rows_read, 1)
        return {
            "rows_read": driver.rows_read,
            "rows_done": done,
            "landed": tally[Outcome.SUCCEEDED],
            "duplicate": tally[Outcome.DUPLICATE],
            "errors": done - tally[Outcome.SUCCEEDED] - tally[Outcome.DUPLICATE],
            "requests": driver.requests.sent,
            "requests_per_second": round(driver.requests.sent / elapsed, 2),
            "effective_rate": round(driver.limiter.effective, 2),
            "rows_per_second": round(rate, 1),
            "input_read": round(read, 4) if read is not None else None,
            # With stdin, of the rows read so far: its length is unknown ahead.
            "eta_seconds": round(elapsed * (1 - share) / share, 1) if share > 0 else None,
        }

    def _render(self) -> Text:
        s = self.snapshot()
        eta = s["eta_seconds"]
        # Most telling first: a narrow terminal cuts the line from its end.
        text = Text(
            f"rows {s['rows_done']:,}/{s['rows_read']:,}  "
            f"eta {f'{eta:.0f}s' if isinstance(eta, float) else '-'}  "
            f"{s['rows_per_second']:,} rows/s  landed {s['landed']:,}  errors {s['errors']:,}  "
            f"{s['requests_per_second']}/{s['effective_rate']} req/s",
            no_wrap=True,
            overflow="ellipsis",
        )
        text.truncate(max(20, self._console.width - 1), overflow="ellipsis")
        return text

    def _progress(self) -> None:
        log.info("progress", **self.snapshot())


def _stdout() -> Console:
    # Off a terminal rich would wrap at 80 columns, cutting channel ids and paths that
    # scripts and logs need whole.
    console = _Console()
    return console if console.is_terminal else _Console(width=200)


def print_summary(summary: Summary) -> None:
    console = _stdout()
    table = Table(title=f"{summary.command} {summary.run_id}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = summary.rows
    for name in ("total", *(o.value for o in Outcome)):
        if name == "total" or rows.get(name):
            table.add_row(f"rows {name}", f"{rows.get(name, 0):,}")
    for action in Action:
        if summary.actions.get(action.value):
            table.add_row(f"  {action.value}", f"{summary.actions[action.value]:,}")
    if summary.already_landed:
        table.add_row("  landed by the run resumed", f"{summary.already_landed:,}")
    if summary.extras is not None:
        table.add_row("live members not named", f"{summary.extras.get('total', 0):,}")
        for fate in Fate:
            if summary.extras.get(fate.value):
                table.add_row(f"  {fate.value}", f"{summary.extras[fate.value]:,}")
    requests = summary.requests
    for key, label in (
        ("sent", "requests sent"),
        ("retried", "requests retried"),
        ("split", "batches split"),
        ("would_send", "requests a run would send"),
    ):
        if key in requests:
            table.add_row(label, f"{requests[key]:,}")
    statuses = requests.get("by_status")
    if isinstance(statuses, Mapping):
        table.add_row("answers", ", ".join(f"{k}: {v}" for k, v in statuses.items()) or "-")
    rate = summary.rate
    if rate:
        table.add_row("rate limit / achieved", f"{rate['configured']} / {rate['achieved']} per s")
    table.add_row("elapsed", f"{summary.elapsed_seconds} s")
    for label, value in (
        ("shard", summary.shard),
        ("stopped", summary.stop_reason),
        ("input error", summary.input_error),
        ("reports error", summary.reports_error),
    ):
        if value:
            table.add_row(label, str(value))
    table.add_row("exit code", _exit(summary.exit_code))
    console.print(table)
    _print_paths(console, summary.run_dir)


def print_channels(channels: Sequence[Mapping[str, object]], *, every: bool) -> None:
    """The per-channel table of a sync (all channels with ``every``, else those with
    something to do), readable at 80 columns; the run directory has it whole."""
    console = _stdout()
    shown = [c for c in channels if every or _busy(c)]
    if not shown:
        return
    # Fits 80 columns: the channel id (32 characters; unique, so the instance is left to
    # channels.csv) and five counts of up to seven digits.
    table = Table(
        title="channels",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("channel", no_wrap=True)
    for name in ("create", "update", "same", "remove", "kept"):
        table.add_column(name, justify="right", max_width=7, no_wrap=True)
    for c in shown:
        table.add_row(
            str(c["vpc_channel_id"]),
            *(str(c[key]) for key in ("creates", "updates", "unchanged", "removals", "kept")),
        )
    console.print(table)
    quiet = len(channels) - len(shown)
    if quiet:
        console.print(f"... and {quiet:,} channels already in sync")
    failed = sum(1 for c in channels if c["failed"])
    if failed:
        console.print(
            f"{failed:,} channel(s) stopped before they were in sync: channels.csv says why"
        )


def _busy(channel: Mapping[str, object]) -> bool:
    """Whether a channel was not simply in sync: something was (or would be) done to it,
    a guard kept it, or it stopped."""
    return any(channel[key] for key in ("creates", "updates", "removals", "kept", "failed"))


def _exit(code: ExitCode) -> str:
    return f"{int(code)} ({code.name.lower()})"


def print_plan(plan: Plan, run_dir: Path, code: ExitCode) -> None:
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
    if code is not ExitCode.OK:
        console.print(f"exit code {_exit(code)}")
    _print_paths(console, run_dir)


def _print_paths(console: Console, run_dir: Path) -> None:
    console.print(f"reports: {run_dir}/", soft_wrap=True, highlight=False)
    for path in sorted(run_dir.iterdir()):
        if not path.name.startswith("."):
            console.print(f"  {path}", soft_wrap=True, highlight=False)
