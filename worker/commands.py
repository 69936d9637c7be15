"""The ``run`` and ``plan`` commands: the shell around the pipeline.

Files, the token, TLS, signals, the clock, the lock and the terminal live here; the
decisions live in the pure modules this one wires together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog

from worker import logs
from worker.api import MembersClient
from worker.batching import Batcher
from worker.display import Display, print_plan, print_summary
from worker.intake import Intake, missing_columns
from worker.inventory import Format, Input, InputError, Reader, Stream, detect, open_inputs
from worker.limits import RateLimiter
from worker.lock import LockBusy, RunLock
from worker.pipeline import Ledger, Migration, Options, make_plan
from worker.reports import ReportWriter, extra_columns, landed_rows, write_json_atomic

log = structlog.get_logger("vpc_members")

EXIT_OK: Final = 0
EXIT_ROWS: Final = 1
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
EXIT_LOCKED: Final = 75
EXIT_SIGNAL: Final = {"interrupted": 130, "terminated": 143}
# Stop reasons of a run the endpoint and the client could not go on with (exit 3).
_REFUSALS: Final = frozenset({"token_refused", "certificate_refused"})
DEMO_TOKEN: Final = "demo-token"  # noqa: S105 - the emulator's documented demo token


class ConfigError(Exception):
    """A configuration problem found before anything was sent (exit 2)."""


@dataclass(slots=True)
class Prepared:
    """What both commands need before the first row: inputs opened, reports placed."""

    readers: list[Reader]
    intake: Intake
    reports: ReportWriter
    run_id: str
    run_dir: Path
    started_at: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prepare(args: argparse.Namespace, *, resume: Path | None = None) -> Prepared:
    inputs: list[Input] = [detect(path, args.format) for path in args.inputs]
    readers = open_inputs(inputs)
    fmt: Format = args.report_format or inputs[0].format
    if resume is not None:
        run_dir = resume
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run directory")
        fmt = next((f for f in Format if (run_dir / f"succeeded.{f.value}").exists()), fmt)
        landed = landed_rows(run_dir, fmt)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_dir = args.reports_dir / f"{stamp}-{secrets.token_hex(3)}"
        landed = set()
    defaults = {
        name: value
        for name, value in (
            ("project_id", args.project_id),
            ("instance_id", args.instance_id),
            ("vpc_channel_id", args.channel_id),
        )
        if value
    }
    for reader in readers:
        problem = reader.columns and missing_columns(reader.columns, defaults)
        if problem:
            raise InputError(reader.input.name, problem)
    columns = extra_columns(
        (r.columns for r in readers if r.input.format is Format.CSV),
        any(r.input.format is Format.NDJSON for r in readers),
    )
    args.reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    reports = ReportWriter(run_dir, fmt, columns, resume=resume is not None)
    return Prepared(readers, Intake(defaults, landed), reports, run_dir.name, run_dir, _now())


@contextlib.contextmanager
def _logging(args: argparse.Namespace) -> Iterator[None]:
    if args.log_file is None:
        logs.configure(args.log_format, args.log_level)
        yield
        return
    fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8", buffering=1) as stream:
        logs.configure(args.log_format, args.log_level, stream)
        yield


def _collect_less() -> None:
    """Tune the garbage collector for a run.

    A run keeps every row in flight alive for a while (its entry, member, report row), so
    the default threshold (700 allocations) collected every ~60 rows and kept rescanning
    the rows waiting in batches: 2-3 µs of a run's CPU per row. Young collections every
    10,000 allocations stay short (a millisecond), so they hold no request back from its
    slot; the older generations, where rows in flight end up until their batch lands and
    refcounting frees them, are scanned a hundred times less often than by default. What
    exists before the run (modules, the parsed options, the opened inputs) lives to the
    end: frozen, it is never scanned again. ``plan`` keeps no rows and gains nothing.
    """
    gc.freeze()
    gc.set_threshold(10_000, 100, 100)


def plan(args: argparse.Namespace) -> int:
    """``vpc-members plan``: counts per channel; invalid and duplicate rows to the reports."""
    with _logging(args):
        try:
            prepared = _prepare(args)
        except (InputError, ConfigError, OSError) as exc:
            return _usage_error(exc)
        ledger = Ledger(prepared.reports)
        batcher: Batcher[None] = Batcher(args.batch_size, args.max_body_bytes)
        stream = Stream(prepared.readers)
        result = make_plan(stream, prepared.intake, batcher, ledger)
        prepared.reports.close()
        # A plan lands nothing: a header-only succeeded file would only suggest otherwise.
        prepared.reports.succeeded.path.unlink()
        print_plan(result, prepared.run_dir)
        if stream.error is not None:
            _input_broke(stream.error)
            return EXIT_USAGE
        return EXIT_OK if ledger.tally.settled_ok else EXIT_ROWS


def _usage_error(exc: BaseException) -> int:
    """Nothing was sent: a flag, the environment, a file or an input is wrong (exit 2)."""
    log.error("config_error", error=str(exc))
    print(f"vpc-members: error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _input_broke(error: InputError) -> None:
    """An input stopped midway: the rows before it were processed; say where it broke."""
    log.error("input_unreadable", source=error.source, line=error.line, reason=error.reason)
    print(f"vpc-members: error: {error}; the rows before it are accounted for", file=sys.stderr)


def _read_token(args: argparse.Namespace) -> str:
    if args.emulator:
        # The embedded emulator is not the real service: it gets its demo token, never the
        # user's real one.
        return DEMO_TOKEN
    token_file: Path | None = args.token_file
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror}") from exc
    else:
        token = os.environ.get("VPC_MEMBERS_TOKEN", "").strip()
    if not token:
        raise ConfigError("no token: set VPC_MEMBERS_TOKEN or pass --token-file PATH")
    return token


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | bool | None:
    if args.insecure:
        log.warning("tls_verification_disabled", reason="--insecure given")
        return False
    if args.ca_bundle is not None:
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=str(args.ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ca-bundle {args.ca_bundle}: {exc}") from exc
        return context
    return None


def run(args: argparse.Namespace) -> int:
    """``vpc-members run``: the migration."""
    with _logging(args):
        try:
            token = _read_token(args)
            if not args.emulator and not args.endpoint:
                raise ConfigError("no endpoint: pass --endpoint URL or set VPC_MEMBERS_ENDPOINT")
            ssl_context = _ssl_context(args)
            args.reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with RunLock(args.lock_file or args.reports_dir / ".lock"):
                prepared = _prepare(args, resume=args.resume)
                _collect_less()
                return asyncio.run(_migrate(args, prepared, token, ssl_context))
        except LockBusy as exc:
            log.error("lock_busy", error=str(exc))
            print(f"vpc-members: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        except (InputError, ConfigError, OSError) as exc:
            return _usage_error(exc)


@contextlib.asynccontextmanager
async def _endpoint(args: argparse.Namespace) -> AsyncIterator[str]:
    if not args.emulator:
        yield str(args.endpoint)
        return
    from worker.emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(auto_create=True, tokens=(DEMO_TOKEN,))) as emulator:
        yield emulator.url


async def _migrate(
    args: argparse.Namespace,
    prepared: Prepared,
    token: str,
    ssl_context: ssl.SSLContext | bool | None,
) -> int:
    options = Options(
        batch_size=args.batch_size,
        max_body_bytes=args.max_body_bytes,
        concurrency=args.concurrency,
        per_channel_concurrency=args.per_channel_concurrency,
        max_attempts=args.max_attempts,
        drain_timeout=args.drain_timeout,
    )
    ledger = Ledger(prepared.reports)
    limiter = RateLimiter(args.rate)
    started = time.monotonic()
    log.info(
        "run_started",
        run_id=prepared.run_id,
        inputs=args.inputs,
        rate=args.rate,
        concurrency=args.concurrency,
        reports=str(prepared.run_dir),
    )
    async with (
        _endpoint(args) as endpoint,
        MembersClient(
            endpoint,
            token,
            api=args.api,
            timeout=args.timeout,
            connections=args.concurrency,
            ssl_context=ssl_context,
            pacer=limiter,
        ) as client,
    ):
        migration = Migration(options, prepared.intake, ledger, client, limiter)
        stream = Stream(prepared.readers)
        loop = asyncio.get_running_loop()
        signals = _Signals(migration, loop)
        display = Display(args.progress, migration, limiter)
        try:
            with display:
                await migration.run(stream)
        finally:
            signals.restore()
            prepared.reports.close()
    elapsed = time.monotonic() - started
    code = _exit_code(migration, stream.error)
    summary = {
        "run_id": prepared.run_id,
        "started_at": prepared.started_at,
        "finished_at": _now(),
        "elapsed_seconds": round(elapsed, 3),
        "inputs": list(args.inputs),
        "rows": dict(ledger.tally.as_dict()),
        "requests": migration.requests.as_dict(),
        "rate": {
            "configured": args.rate,
            "achieved": round(migration.achieved_rate(), 3),
            "effective_over_time": [
                {"t": round(t - started, 3), "rate": round(r, 3)} for t, r in limiter.changes
            ],
        },
        "distinct_addresses": prepared.intake.distinct,
        "stop_reason": migration.stop_reason,
        "input_error": str(stream.error) if stream.error else None,
        "reports": [str(p) for p in prepared.reports.paths],
        "exit_code": code,
    }
    write_json_atomic(prepared.run_dir / "summary.json", summary)
    log.info("run_finished", run_id=prepared.run_id, exit_code=code, **ledger.tally.as_dict())
    print_summary(summary, prepared.run_dir)
    if stream.error is not None:
        _input_broke(stream.error)
    if migration.stop_reason in _REFUSALS and migration.stop_result is not None:
        status = migration.stop_result.http_status
        print(
            f"vpc-members: error: {migration.stop_result.error_msg} "
            f"({f'{status} ' if status else ''}{migration.stop_result.error_code}); "
            "nothing more was sent, and every unsent row is reported aborted",
            file=sys.stderr,
        )
    return code


def _exit_code(migration: Migration, input_error: InputError | None) -> int:
    if migration.stop_reason in EXIT_SIGNAL:
        return EXIT_SIGNAL[migration.stop_reason]
    if migration.stop_reason in _REFUSALS:
        return EXIT_REFUSED
    if input_error is not None:
        return EXIT_USAGE
    return EXIT_OK if migration.ledger.tally.settled_ok else EXIT_ROWS


class _Signals:
    """SIGINT/SIGTERM stop dispatching and let requests in flight drain; a second SIGINT
    exits at once (the append-only reports stay whole, and ``--resume`` picks up)."""

    def __init__(self, migration: Migration, loop: asyncio.AbstractEventLoop) -> None:
        self._migration = migration
        self._loop = loop
        self._seen = 0
        loop.add_signal_handler(signal.SIGINT, self._handle, "interrupted")
        loop.add_signal_handler(signal.SIGTERM, self._handle, "terminated")

    def _handle(self, reason: str) -> None:
        self._seen += 1
        if self._seen > 1:
            log.error("run_killed", reason="second signal")
            if self._migration.ledger.reports is not None:
                self._migration.ledger.reports.flush()
            os._exit(EXIT_SIGNAL[reason])
        log.warning(
            "run_stopping", reason=reason, drain_timeout=self._migration.options.drain_timeout
        )
        self._migration.interrupt(reason)

    def restore(self) -> None:
        self._loop.remove_signal_handler(signal.SIGINT)
        self._loop.remove_signal_handler(signal.SIGTERM)
