"""The shell of ``run``, ``sync`` and ``plan``: logging, signals, the terminal, exit codes.

The work itself is :class:`worker.runner.Run`, the same call the Python API makes; this
module adds what only a process has. Whatever fails, the exit code is the run's: a usage
problem is 2, a busy lock 75, a crash 70 with its traceback in the log (never local
variables, never a secret), and a broken stdout or stderr degrades to silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog

from worker import logs
from worker.config import Config, unknown_variables
from worker.exits import SIGNALLED, ExitCode, most_urgent
from worker.inventory import STDIN, collect_less
from worker.outcomes import StopReason

if TYPE_CHECKING:
    from worker.driver import Driver
    from worker.inventory import Stream
    from worker.runner import Run, Summary

log = structlog.get_logger("vpc_members")

_SIGNALS = {signal.SIGINT: StopReason.INTERRUPTED, signal.SIGTERM: StopReason.TERMINATED}


@contextlib.contextmanager
def _logging(config: Config) -> Iterator[TextIO | None]:
    if config.log_file is None:
        logs.configure(config.log_format, config.log_level)
        yield None
        return
    fd = os.open(config.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    try:
        logs.configure(config.log_format, config.log_level, stream)
        yield stream
    finally:
        # A log on a full disk has gone quiet; its last flush must not fail the run.
        with contextlib.suppress(OSError):
            stream.close()


def say(text: str) -> None:
    """One line for the person at the terminal (stderr), scrubbed; never raises."""
    with contextlib.suppress(OSError, ValueError):
        print(logs.SECRETS.scrub(text), file=sys.stderr, flush=True)


def execute(command: str, config: Config) -> int:
    """Run ``command`` as a process: returns the exit code."""
    # A file-size limit (RLIMIT_FSIZE) would otherwise kill the process mid-write; ignored,
    # the write fails with EFBIG and the run stops as it does for a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    summary: Summary | None = None
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    try:
        with _logging(config):
            code, summary = _execute(command, config)
            _write_metrics(command, config, code, summary)
    except OSError as exc:  # the log file itself
        say(f"vpc-members: error: --log-file {config.log_file}: {exc.strerror}")
        code = ExitCode.USAGE
        _write_metrics(command, config, code, None)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    _quiet_stdout()
    if STDIN in config.inputs and _reading_stdin():
        # A run that stopped before its stdin ended leaves the thread reading it blocked
        # there, holding stdin's lock: the interpreter's exit would wait for that lock,
        # and abort (exit 134). Everything is written and flushed; leave at once.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(int(code))
    return int(code)


def _reading_stdin() -> bool:
    """Whether the input's thread still runs, in a run that read stdin: blocked on it,
    where the thread of a file's run only waits for room (see driver.ThreadedChunks),
    which the interpreter's exit does not wait for."""
    from worker.driver import INPUT_THREAD

    return any(t.name == INPUT_THREAD and t.is_alive() for t in threading.enumerate())


def _write_metrics(command: str, config: Config, code: ExitCode, summary: Summary | None) -> None:
    if config.metrics_file is None:
        return
    from worker.metrics import write_metrics

    try:
        write_metrics(config.metrics_file, command, code, time.time(), summary)
    except OSError as exc:
        log.error("metrics_unwritable", path=str(config.metrics_file), error=str(exc))
        say(f"vpc-members: error: --metrics-file {config.metrics_file}: {exc.strerror or exc}")


def _execute(command: str, config: Config) -> tuple[ExitCode, Summary | None]:
    from worker.inventory import InputError
    from worker.lock import LockBusy
    from worker.manifest import ManifestError
    from worker.reports import ReportCorrupt
    from worker.runner import ConfigError, Run

    run = Run(config, command, watch=_watcher(config))
    # Bound here too, so that events logged outside the run's event loop (a usage error,
    # a crash) carry it.
    logs.bind_run(run.run_id)
    for name in unknown_variables(os.environ):
        # The name only: a value may be a secret set under a misspelt name.
        log.warning("variable_unknown", variable=name, advice="not a setting; see --help")
    try:
        collect_less()
        summary = asyncio.run(_main(run)) if command != "plan" else _plan(run)
        # The run is over and its summary written: a signal now has nothing left to stop,
        # and must not make the process end otherwise than the summary says.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    except _Signalled as exc:
        # plan sends nothing, so there is nothing to drain: it stops where it is.
        log.warning("run_stopping", signal=exc.signal.name)
        say(f"vpc-members: plan stopped by {exc.signal.name}; it sent nothing")
        return exc.code, None
    except LockBusy as exc:
        log.error("lock_busy", error=str(exc))
        say(f"vpc-members: {exc}")
        return ExitCode.LOCKED, None
    except (ConfigError, InputError, ManifestError, ReportCorrupt, OSError, ValueError) as exc:
        log.error("config_error", error=str(exc))
        say(f"vpc-members: error: {exc}")
        return ExitCode.USAGE, None
    except Exception:
        log.exception("run_crashed")
        say(
            "vpc-members: internal error (a bug): the run stopped; the traceback is in the "
            "log. Reports hold whole rows, and --resume continues the run."
        )
        return ExitCode.CRASH, None
    from worker.display import print_channels, print_plan, print_summary

    with contextlib.suppress(OSError, ValueError):
        if summary.plan is not None:
            print_plan(summary.plan, summary.run_dir, summary.exit_code)
        else:
            if summary.channels is not None:
                print_channels(summary.channels, every=summary.dry_run)
            print_summary(summary)
    if summary.input_error:
        say(f"vpc-members: error: {summary.input_error}; the rows before it are accounted for")
    # Reports that could not be written are the line after this one's to tell, not the
    # endpoint's.
    if summary.stop_reason not in (None, StopReason.REPORTS_UNWRITABLE, *SIGNALLED):
        say(
            f"vpc-members: error: {summary.endpoint}: {summary.stop_detail} "
            f"({summary.stop_reason}); nothing more "
            "was sent, and every unsent row is reported aborted"
        )
    if summary.reports_error:
        say(
            f"vpc-members: error: cannot write the reports: {summary.reports_error}; nothing "
            "more was sent. Free the space, then --resume the run: it sends again what has "
            "no report row"
        )
    return summary.exit_code, summary


class _Signalled(BaseException):
    """SIGINT or SIGTERM during ``plan`` (a BaseException, as KeyboardInterrupt is: no
    ``except Exception`` may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum)
        self.code = SIGNALLED[_SIGNALS[self.signal]]


def _plan(run: Run) -> Summary:
    """``plan``, on this thread: a SIGINT or SIGTERM raises _Signalled where it runs, and
    the reports are closed on the way out, as any error closes them."""

    def stop(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    previous = {signum: signal.signal(signum, stop) for signum in _SIGNALS}
    try:
        return run.plan()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


async def _main(run: Run) -> Summary:
    loop = asyncio.get_running_loop()
    seen: list[StopReason] = []

    def handle(reason: StopReason) -> None:
        # Act first, log after: nothing a log write does may keep a signal from working.
        seen.append(reason)
        if len(seen) > 1:
            driver = run.driver
            if driver is not None:
                with contextlib.suppress(Exception):
                    driver.ledger.flush()
            # The code of the most urgent signal seen: SIGINT then SIGTERM is 130.
            os._exit(most_urgent(SIGNALLED[signalled] for signalled in seen))
        run.interrupt(reason)
        log.warning("run_stopping", reason=reason, drain_timeout=run.config.drain_timeout)

    for signum, reason in _SIGNALS.items():
        loop.add_signal_handler(signum, handle, reason)
    try:
        return await run.execute()
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


def _watcher(
    config: Config,
) -> Callable[[Driver, Stream], contextlib.AbstractContextManager[object]]:
    def watch(driver: Driver, stream: Stream) -> contextlib.AbstractContextManager[object]:
        from worker.display import Display

        return Display(config.progress, driver, stream.fraction)

    return watch


def _quiet_stdout() -> None:
    """Flush stdout now; if its reader is gone, point it at /dev/null so the interpreter's
    own flush at exit cannot fail and change the exit code."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


def merge(runs: list[str], out: Path) -> int:
    """``vpc-members merge``: see :mod:`worker.merge`."""
    from worker.merge import MergeError, merge_runs

    logs.configure()
    try:
        summary = merge_runs([Path(run) for run in runs], out)
    except (MergeError, OSError) as exc:
        say(f"vpc-members merge: error: {exc}")
        return ExitCode.USAGE
    except Exception:
        log.exception("merge_crashed")
        say("vpc-members merge: internal error (a bug); the traceback is in the log")
        return ExitCode.CRASH
    from worker.display import print_summary

    with contextlib.suppress(OSError, ValueError):
        print_summary(summary)
    _quiet_stdout()
    return int(summary.exit_code)
