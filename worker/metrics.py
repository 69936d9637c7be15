"""Prometheus metrics of the last run, for node_exporter's textfile collector.

Written at the end of every run, failed ones included, atomically and without following
a symbolic link (:func:`worker.reports.write_atomic`; prometheus_client's own writer
opens a temporary file of a name anyone can guess, following links), at mode 0644 less
the umask, as that writer made it, for a node_exporter that runs as another user.
``vpc_members_last_success_timestamp_seconds`` is carried over from the previous file
when this run did not succeed, so an alert on its age catches a job that keeps failing as
well as one that stopped running.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.exits import ExitCode
from worker.reports import write_atomic

if TYPE_CHECKING:
    from worker.runner import Summary

LAST_SUCCESS = "vpc_members_last_success_timestamp_seconds"
# The run did its job: every valid row landed (invalid input rows are the inventory's).
SUCCESSES = frozenset({ExitCode.OK, ExitCode.INVALID_ROWS})


def previous_success(path: Path, command: str) -> float | None:
    """The last success of ``command`` recorded in an earlier metrics file, if any (a
    file another command wrote last tells nothing of this one's)."""
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            if family.name == LAST_SUCCESS:
                for sample in family.samples:
                    if sample.labels.get("command") == command:
                        return float(sample.value)
    return None


def write_metrics(
    path: Path,
    command: str,
    code: ExitCode,
    now: float,
    summary: Summary | None = None,
) -> None:
    """Write the metrics of a run that ended with ``code`` at Unix time ``now``;
    ``summary`` is None when the run ended before it had one (a usage error, a crash)."""
    registry = CollectorRegistry()

    def gauge(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, help_text, labels, registry=registry)

    info = ("command",)
    gauge("vpc_members_exit_code", "Exit code of the last run.", info).labels(command).set(
        int(code)
    )
    gauge("vpc_members_last_run_timestamp_seconds", "When the last run ended.", info).labels(
        command
    ).set(now)
    success = now if code in SUCCESSES else previous_success(path, command)
    if success is not None:
        gauge(LAST_SUCCESS, "When a run last landed every valid row.", info).labels(command).set(
            success
        )
    if summary is not None:
        gauge("vpc_members_run_duration_seconds", "Duration of the last run.", info).labels(
            command
        ).set(summary.elapsed_seconds)
        rows = gauge("vpc_members_rows", "Input rows of the last run, by outcome.", ("outcome",))
        for outcome, count in summary.rows.items():
            if outcome != "total":
                rows.labels(outcome).set(count)
        by_status = summary.requests.get("by_status", {})
        requests = gauge(
            "vpc_members_requests", "Requests of the last run, by answer status.", ("status",)
        )
        if isinstance(by_status, dict):
            for status, count in by_status.items():
                requests.labels(str(status)).set(count)
        if summary.extras is not None:
            extras = gauge(
                "vpc_members_live_extras", "Live members not in the inventory, by fate.", ("fate",)
            )
            for fate, count in summary.extras.items():
                if fate != "total":
                    extras.labels(fate).set(count)
    write_atomic(path, generate_latest(registry), mode=0o644)
