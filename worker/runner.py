"""The Python API: one :class:`~worker.config.Config`, one call, a typed :class:`Summary`.

    import asyncio
    from worker import Config, run

    summary = asyncio.run(run(Config(inputs=("servers.csv",), endpoint="https://apig.example.com")))
    print(summary.exit_code, summary.rows)

The command line is built on exactly this. Here live the edges a run needs: the files
(inputs, the run directory, its manifest, the lock), the credentials, the endpoint, TLS,
and the clock; the decisions are in the pure modules this one wires together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import structlog

from worker import fastlane, logs, manifest, regions
from worker.batching import Batcher
from worker.config import Config, Format
from worker.credentials import CredentialError, Credentials, Resolved, Token, resolve
from worker.driver import READ_SLICE, Driver, Options, ThreadedChunks, inline_chunks
from worker.exits import ExitCode, Facts, exit_code, most_urgent
from worker.intake import Intake, missing_columns
from worker.inventory import (
    STDIN,
    Input,
    InputError,
    Reader,
    Record,
    Stream,
    detect,
    open_inputs,
)
from worker.ledger import Ledger
from worker.limits import RateLimiter
from worker.lock import RunLock
from worker.members import is_loopback
from worker.outcomes import Fate, Outcome, Result, StopReason
from worker.planning import Plan, Planner, Upserts, make_plan
from worker.reports import (
    DRY_RUN_RESUMED,
    EXTRA_JSON_COLUMN,
    ReportsUnwritable,
    ReportWriter,
    extra_columns,
    landed_rows,
    write_csv_atomic,
    write_json_atomic,
)
from worker.shards import Shard, parse_shard

log = structlog.get_logger("vpc_members")

LATEST: Final = "latest"


class ConfigError(Exception):
    """A configuration problem found before anything was sent (exit 2)."""


@dataclass(slots=True)
class Summary:
    """What a run did: the same facts ``summary.json`` holds."""

    run_id: str
    command: str
    run_dir: Path
    exit_code: ExitCode
    started_at: str
    finished_at: str = ""
    elapsed_seconds: float = 0.0
    inputs: list[str] = field(default_factory=list)
    endpoint: str | None = None
    shard: str | None = None
    dry_run: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    already_landed: int = 0
    extras: dict[str, int] | None = None
    requests: dict[str, object] = field(default_factory=dict)
    rate: dict[str, object] = field(default_factory=dict)
    distinct_addresses: int = 0
    rows_read: int = 0
    channels: list[dict[str, object]] | None = field(default=None, repr=False)
    stop_reason: StopReason | None = None
    stop_detail: str | None = None
    input_error: str | None = None
    reports_error: str | None = None
    reports: list[str] = field(default_factory=list)
    plan: Plan | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("plan")
        data.pop("channels")
        data["run_dir"] = str(self.run_dir)
        data["exit_code"] = int(self.exit_code)
        return data


@dataclass(slots=True)
class _Prepared:
    """Everything a command needs before its first row."""

    readers: list[Reader]
    intake: Intake
    ledger: Ledger
    run_id: str
    run_dir: Path
    started_at: str
    inputs: list[str]
    stdin: bool
    # run.json being written, when it was not before the inputs are read.
    run_json: Future[None] | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_private_dir(path: Path, what: str) -> None:
    """Refuse a directory another user owns, or that others may write to: they could plant
    links or files in it that this run would then write through."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) and what == "run directory":
        raise ConfigError(f"{what} {path} is a symbolic link; refusing to write through it")
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{what} {path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise ConfigError(
            f"{what} {path} may be written by others (mode {stat.filemode(info.st_mode)}); "
            f"chmod go-w it"
        )


class Run:
    """One ``run``, ``sync`` or ``plan`` of a :class:`Config`.

    Parameters:
        config: the settings.
        command: ``run``, ``sync`` or ``plan``.
        credentials: what authenticates requests (default: from the environment, see
            :func:`worker.credentials.resolve`).
        env: the environment to read (default: ``os.environ``).
        watch: wraps the sending phase, given the driver and the input stream (the CLI's
            progress display).

    :meth:`execute` raises ConfigError (or InputError, ReportCorrupt, ManifestError: exit
    2) when nothing could be started, LockBusy (exit 75) when another run holds the lock;
    anything else is a bug. :meth:`interrupt` is for signal handlers.
    """

    def __init__(
        self,
        config: Config,
        command: str = "run",
        *,
        credentials: Credentials | None = None,
        env: Mapping[str, str] | None = None,
        watch: Callable[[Driver, Stream], AbstractContextManager[object]] | None = None,
    ) -> None:
        if isinstance(credentials, str | bytes):
            raise TypeError(
                "credentials: a worker.credentials object (Token(...), AkSk(...)), not a string"
            )
        self.config = config
        self.command = command
        self.credentials = credentials
        self.env = dict(os.environ if env is None else env)
        self.watch = watch
        self.driver: Driver | None = None
        self._interrupted: StopReason | None = None
        # A project id the credentials' source names (HUAWEICLOUD_SDK_PROJECT_ID, the
        # credentials file) fills a missing one, as the SDK does.
        self._project_id: str | None = config.project_id
        # Named at once, so that every event of the run carries it (a resumed run takes
        # the name its first run had, once its manifest is read).
        self.run_id = new_run_id()
        self._started = False

    def interrupt(self, reason: StopReason = StopReason.INTERRUPTED) -> None:
        """Stop as a signal stops a run: dispatch no more; requests in flight get
        ``drain_timeout`` to end; every row not sent is reported aborted (exit 130, or
        143 for ``StopReason.TERMINATED``). Safe to call from any task of the run's
        event loop."""
        if self.driver is not None:
            self.driver.interrupt(reason)
        elif self._interrupted is None:
            self._interrupted = reason

    # -- preparing -----------------------------------------------------------------------------

    def _shard(self) -> Shard | None:
        if self.config.shard is None:
            return None
        try:
            return parse_shard(self.config.shard, self.env)
        except ValueError as exc:
            raise ConfigError(f"--shard: {exc}") from None

    @property
    def _defaults(self) -> dict[str, str]:
        """The channel ids given as options, for rows that have none."""
        c = self.config
        given = (
            ("project_id", self._project_id),
            ("instance_id", c.instance_id),
            ("vpc_channel_id", c.channel_id),
        )
        return {name: value for name, value in given if value}

    def _manifest(
        self, sources: Sequence[Input], endpoint: str | None, shard: Shard | None
    ) -> manifest.Manifest:
        """run.json: the inputs' fingerprints and the options that decide."""
        return manifest.Manifest(
            self.command,
            self.run_id,
            tuple(manifest.fingerprint(source) for source in sources),
            self._decisions(endpoint, shard),
        )

    def _write_manifest(
        self, run_dir: Path, sources: Sequence[Input], endpoint: str | None, shard: Shard | None
    ) -> None:
        current = self._manifest(sources, endpoint, shard)
        write_json_atomic(run_dir / manifest.NAME, current.to_json())

    def _decisions(self, endpoint: str | None, shard: Shard | None) -> dict[str, object]:
        """The options whose change would change what a resumed run decides."""
        c = self.config
        return {
            "api": str(c.api),
            "endpoint": endpoint,
            "project_id": self._project_id,
            "instance_id": c.instance_id,
            "channel_id": c.channel_id,
            "shard": str(shard) if shard else None,
            "prune": c.prune if self.command == "sync" else None,
            "max_prune": c.max_prune if self.command == "sync" else None,
            # Only when set, as run.json had no such key before.
            "dry_run": (self.command == "sync" and c.dry_run) or None,
        }

    def _open_reports_dir(self) -> None:
        """The reports directory, made if missing: refused if anyone but its owner may
        write there (see check_private_dir)."""
        reports_dir = self.config.reports_dir
        try:
            reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise ConfigError(f"--reports-dir {reports_dir}: not a directory") from None
        except OSError as exc:
            raise ConfigError(f"--reports-dir {reports_dir}: {exc.strerror or exc}") from None
        check_private_dir(reports_dir, "reports directory")

    def _prepare(
        self, endpoint: str | None, shard: Shard | None, hashing: Executor | None = None
    ) -> _Prepared:
        """Inputs opened, the run directory and its reports made, run.json written (by
        ``hashing``, when given: see ``_Prepared.run_json``)."""
        config = self.config
        if config.dry_run and self.command == "run":
            # Set in the environment or a config file, or through the API: a run would
            # write all the same.
            raise ConfigError(
                "dry-run is set, but run has none and would write: plan shows what a run "
                "would send, sync --dry-run the diff against the live state"
            )
        if not config.inputs:
            raise ConfigError("no input: name at least one inventory file (or - for stdin)")
        sources: list[Input] = [detect(path, config.format) for path in config.inputs]
        _named_once(sources)
        reports_dir = config.reports_dir
        resume = config.resume if self.command != "plan" else None
        recorded: manifest.Manifest | None = None
        if resume is not None:
            if config.dry_run:
                raise ConfigError("--resume and --dry-run do not go together")
            if resume.is_symlink() and resume.resolve().parent == resume.parent.resolve():
                # REPORTS_DIR/latest, or another link to a sibling run directory.
                resume = resume.resolve()
            if not resume.is_dir():
                raise ConfigError(f"--resume {resume}: no such run directory")
            check_private_dir(resume, "run directory")
            recorded = manifest.load(resume)
            if recorded.decisions.get("dry_run"):
                raise ConfigError(f"--resume {resume}: {DRY_RUN_RESUMED}")
            run_dir, run_id = resume, recorded.run_id
            self.run_id = run_id
            logs.bind_run(run_id)
        else:
            run_id = self.run_id
            run_dir = reports_dir / run_id
        sources = manifest.inputs_of(sources, recorded)
        readers = open_inputs(sources)
        try:
            # Before the run directory is made: an input refused for its header leaves none.
            for reader in readers:
                problem = reader.columns and missing_columns(reader.columns, self._defaults)
                if problem:
                    raise InputError(reader.input.name, problem)
            if recorded is None:
                run_dir.mkdir(mode=0o700)
            writing: Future[None] | None = None
            if hashing is not None:
                # The inputs hashed while they are read, as hashing releases the GIL: for
                # a plan, which sends nothing and is never resumed, so run.json can wait.
                writing = hashing.submit(self._write_manifest, run_dir, sources, endpoint, shard)
            elif recorded is not None:
                current = self._manifest(sources, endpoint, shard)
                problems = manifest.differences(recorded, current)
                if problems:
                    raise ConfigError(
                        f"--resume {resume}: this is not the same run: " + "; ".join(problems)
                    )
            else:
                self._write_manifest(run_dir, sources, endpoint, shard)
            prepared = self._open_reports(readers, sources, run_dir, run_id, shard, recorded)
            prepared.run_json = writing
            return prepared
        except BaseException:
            for reader in readers:
                reader.close()
            raise

    def _open_reports(
        self,
        readers: list[Reader],
        sources: list[Input],
        run_dir: Path,
        run_id: str,
        shard: Shard | None,
        recorded: manifest.Manifest | None,
    ) -> _Prepared:
        config = self.config
        fmt: Format = config.report_format or sources[0].format
        if recorded is not None:
            fmt = next((f for f in Format if (run_dir / f"succeeded.{f.value}").exists()), fmt)
            landed = landed_rows(run_dir, fmt)
        else:
            landed = set()
        columns = extra_columns(
            (r.columns for r in readers if r.input.format is Format.CSV),
            any(
                r.input.format is Format.NDJSON or (r.report and EXTRA_JSON_COLUMN in r.columns)
                for r in readers
            ),
        )
        reports = ReportWriter(
            run_dir, fmt, columns, resume=recorded is not None, extras=self.command == "sync"
        )
        return _Prepared(
            readers,
            Intake(self._defaults, landed, shard),
            Ledger(reports),
            run_id,
            run_dir,
            _now(),
            [source.name for source in sources],
            any(source.path == STDIN for source in sources),
        )

    # -- sending -------------------------------------------------------------------------------

    def _endpoint(self) -> str | None:
        config = self.config
        if config.emulator:
            return None
        if config.endpoint:
            endpoint = config.endpoint
        elif config.region:
            try:
                endpoint = regions.endpoint(config.api, config.region, self.env)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        else:
            raise ConfigError(
                "no endpoint: pass --endpoint URL or --region REGION "
                "(or set VPC_MEMBERS_ENDPOINT), or --emulator to rehearse"
            )
        parts = urlsplit(endpoint)
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            if not config.allow_http:
                raise ConfigError(
                    f"refusing to send credentials in clear text to {endpoint}: use https://, "
                    "or pass --allow-http if this network is trusted"
                )
            log.warning("plain_http", endpoint=endpoint, reason="--allow-http given")
        return endpoint

    def _credentials(self) -> Resolved:
        config = self.config
        if config.emulator:
            # Imported here: the emulator's package brings aiohttp (0.12 s), which plan
            # does not need.
            from worker.emulator.config import DEFAULT_TOKEN

            # The embedded emulator is not the real service: it gets its demo token, never
            # the user's real credentials.
            return Resolved(Token(DEFAULT_TOKEN), "the embedded emulator")
        if self.credentials is not None:
            return Resolved(self.credentials, "the caller")
        try:
            iam = config.iam_endpoint or (
                regions.iam_endpoint(config.region, self.env) if config.region else None
            )
            return resolve(config, self.env, iam)
        except (CredentialError, ValueError) as exc:
            raise ConfigError(str(exc)) from None

    def _ssl_context(self) -> ssl.SSLContext | bool | None:
        config = self.config
        if config.insecure:
            log.warning("tls_verification_disabled", reason="--insecure given")
            return False
        if config.ca_bundle is not None:
            context = ssl.create_default_context()
            try:
                context.load_verify_locations(cafile=str(config.ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--ca-bundle {config.ca_bundle}: {exc}") from exc
            return context
        return None

    async def execute(self) -> Summary:
        """The run. Cancelled (``task.cancel()``, ``asyncio.timeout``, Ctrl-C under
        ``asyncio.run``), it stops as :meth:`interrupt` stops it, within
        ``drain_timeout``, every row reported, then raises CancelledError; cancelled again
        meanwhile, it stops at once."""
        self._start()
        # Bound for the run only: a Python caller's own events after it carry none.
        with logs.run_bound(self.run_id):
            work = asyncio.ensure_future(self._execute())
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                self.interrupt()
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                raise

    async def _execute(self) -> Summary:
        config = self.config
        shard = self._shard()
        endpoint = self._endpoint()
        resolved = self._credentials()
        credentials = resolved.credentials
        logs.SECRETS.add(credentials.secrets)
        self._project_id = self.config.project_id or resolved.project_id
        ssl_context = self._ssl_context()
        self._open_reports_dir()
        with RunLock(config.lock_file or config.reports_dir / ".lock", "--lock-file"):
            prepared = self._prepare(endpoint, shard)
            with RunLock(prepared.run_dir / ".lock"):
                return await self._send(
                    prepared, endpoint, credentials, resolved.source, ssl_context, shard
                )

    async def _send(
        self,
        prepared: _Prepared,
        endpoint: str | None,
        credentials: Credentials,
        source: str,
        ssl_context: ssl.SSLContext | bool | None,
        shard: Shard | None,
    ) -> Summary:
        config = self.config
        started = time.monotonic()
        limiter = RateLimiter(config.rate)
        log.info(
            "run_started",
            command=self.command,
            inputs=prepared.inputs,
            endpoint=endpoint or "embedded emulator",
            credentials=credentials.kind,
            credentials_from=source,
            rate=config.rate,
            concurrency=config.concurrency,
            shard=str(shard) if shard else None,
            reports=str(prepared.run_dir),
        )
        # Imported here, not for plan: aiohttp takes 0.15 s to import.
        from worker.client import MembersClient

        planner = self._planner(prepared)
        fast = self._fast_lane(prepared, bodies=True)
        stream = fast or Stream(prepared.readers)
        try:
            async with (
                self._serve(endpoint) as url,
                MembersClient(
                    url,
                    credentials,
                    read_timeout=config.timeout,
                    connect_timeout=config.connect_timeout,
                    connections=config.concurrency,
                    ssl_context=ssl_context,
                    pacer=limiter,
                    proxy=config.proxy,
                ) as client,
            ):
                driver = self.driver = Driver(
                    planner,
                    client,
                    limiter,
                    prepared.ledger,
                    Options(
                        api=config.api,
                        concurrency=config.concurrency,
                        per_channel_concurrency=config.per_channel_concurrency,
                        max_attempts=config.max_attempts,
                        drain_timeout=config.drain_timeout,
                        first_alone=credentials.locks_on_failures,
                    ),
                )
                prepared.ledger.on_broken = self._reports_broke
                if self._interrupted is not None:
                    driver.interrupt(self._interrupted)
                chunks: AsyncIterator[Sequence[Record] | fastlane.Part]
                if fast is not None:
                    parts = fastlane.parts(fast.items(), records=READ_SLICE)
                    reports = prepared.ledger.reports
                    if reports is not None and reports.landed_format is Format.CSV:
                        # CSV blocks are read and decided by a thread, whose parsing and
                        # column work release the GIL: deciding a block on the loop would
                        # hold back requests whose slot has come.
                        chunks = fastlane.paced(ThreadedChunks.of(parts, depth=16))
                    else:
                        # NDJSON's decoding and passes hold the GIL: in a thread they
                        # would make the loop wait for it at every turn. Its blocks are
                        # small instead, each decided on the loop when its turn comes.
                        chunks = fastlane.paced(fastlane.inline(parts))
                elif prepared.stdin:
                    chunks = ThreadedChunks(stream, until=driver.stopping)
                else:
                    chunks = inline_chunks(stream)
                with self.watch(driver, stream) if self.watch else contextlib.nullcontext():
                    await driver.run(chunks, lambda: str(stream.error) if stream.error else None)
        finally:
            prepared.ledger.close()
        return self._finish(prepared, driver, stream, started, limiter, shard, endpoint)

    def _fast_lane(self, prepared: _Prepared, *, bodies: bool) -> fastlane.FastStream | None:
        """The inputs through :mod:`worker.fastlane` when it applies to this command and
        these inputs (``bodies``: rows will be sent); None when every row takes the
        reference path."""
        reports = prepared.ledger.reports
        # Rows to send need their landed report rows made in advance, in the reports'
        # format (see reports.landed_lines): inputs of the other format take the
        # reference path.
        landed = reports.landed_format if reports is not None else None
        if (
            not fastlane.enabled(self.env)
            or prepared.stdin
            or not prepared.intake.plain
            or self.command == "sync"
            or (bodies and landed is None)
        ):
            return None
        intake = prepared.intake

        def lane(reader: Reader) -> Iterable[fastlane.Block | Record]:
            # Imported only for the inputs that need them: pyarrow takes 0.3 s and 35 MB.
            fmt = reader.input.format
            if reader.report or (bodies and fmt is not landed):
                return reader
            if fmt is Format.CSV:
                from worker.fastlane.csvblocks import CsvBlocks

                if bodies:
                    assert reports is not None
                    return CsvBlocks(reader, intake, extra=reports.direct_extra)
                # A block read ahead, by a thread: its parsing and column work release
                # the GIL while the plan counts the last one.
                return fastlane.ahead(CsvBlocks(reader, intake))
            if not bodies:
                from worker.fastlane.helper import planned

                return planned(reader, intake)
            from worker.fastlane.ndjson import NdjsonBlocks

            return NdjsonBlocks(reader, intake, sending=True)

        return fastlane.FastStream(prepared.readers, lane)

    def _planner(self, prepared: _Prepared) -> Planner:
        config = self.config
        if self.command == "sync":
            from worker.reconcile import Sync

            return Sync(
                prepared.intake,
                prepared.ledger,
                config.batch_size,
                config.max_body_bytes,
                prune=config.prune,
                max_prune=config.max_prune,
                dry_run=config.dry_run,
            )
        return Upserts(prepared.intake, prepared.ledger, config.batch_size, config.max_body_bytes)

    def _reports_broke(self, error: ReportsUnwritable) -> None:
        log.error("reports_unwritable", path=str(error.path), error=str(error))
        if self.driver is not None:
            result = Result(Outcome.ABORTED, error_code="reports_unwritable", error_msg=str(error))
            self.driver.stop(StopReason.REPORTS_UNWRITABLE, result)

    @contextlib.asynccontextmanager
    async def _serve(self, endpoint: str | None) -> AsyncIterator[str]:
        if endpoint is not None:
            yield endpoint
            return
        from worker.emulator import Emulator, EmulatorConfig
        from worker.emulator.config import DEFAULT_TOKEN

        async with Emulator(EmulatorConfig(auto_create=True, tokens=(DEFAULT_TOKEN,))) as emulator:
            yield emulator.url

    def _finish(
        self,
        prepared: _Prepared,
        driver: Driver,
        stream: Stream,
        started: float,
        limiter: RateLimiter,
        shard: Shard | None,
        endpoint: str | None,
    ) -> Summary:
        ledger = prepared.ledger
        extras = ledger.fates.as_dict() if self.command == "sync" else None
        planner = driver.planner
        channels = self._channels(prepared.run_dir, planner)
        facts = Facts(
            ledger.tally,
            driver.rows_read,
            driver.stop_reason,
            input_broken=stream.error is not None,
            reports_broken=ledger.broken is not None,
            guarded=getattr(planner, "guarded", 0),
            pending_removals=getattr(planner, "pending_removals", 0),
            failed_removals=ledger.fates[Fate.FAILED],
        )
        summary = self._summary(prepared, facts, started, stream)
        summary.endpoint = endpoint or "embedded emulator"
        summary.shard = str(shard) if shard else None
        summary.dry_run = self.config.dry_run and self.command == "sync"
        summary.actions = dict(ledger.tally.actions_dict())
        summary.already_landed = ledger.already_landed
        summary.extras = dict(extras) if extras is not None else None
        summary.requests = driver.requests.as_dict()
        summary.rate = {
            "configured": self.config.rate,
            "achieved": round(driver.achieved_rate(), 3),
            "effective_over_time": [
                {"t": round(t - started, 3), "rate": round(r, 3)} for t, r in limiter.changes
            ],
        }
        summary.channels = channels
        summary.stop_reason = driver.stop_reason
        summary.stop_detail = _detail(driver.stop_result) if driver.stop_result else None
        self._write_summary(summary)
        log.info("run_finished", exit_code=int(summary.exit_code), **ledger.tally.as_dict())
        return summary

    def _channels(self, run_dir: Path, planner: Planner) -> list[dict[str, object]] | None:
        """A sync's per-channel counts, also written whole to ``channels.csv``."""
        from worker.reconcile import Sync

        if not isinstance(planner, Sync):
            return None
        rows = [
            {"project_id": c[0], "instance_id": c[1], "vpc_channel_id": c[2], **asdict(counts)}
            for c, counts in sorted(planner.channels.items())
        ]
        try:
            write_csv_atomic(run_dir / "channels.csv", rows)
        except OSError as exc:
            log.error("channels_unwritable", error=str(exc))
        return rows

    def _summary(
        self, prepared: _Prepared, facts: Facts, started: float, stream: Stream
    ) -> Summary:
        """The summary every command has; each adds what is its own."""
        ledger = prepared.ledger
        return Summary(
            run_id=prepared.run_id,
            command=self.command,
            run_dir=prepared.run_dir,
            exit_code=exit_code(facts),
            started_at=prepared.started_at,
            finished_at=_now(),
            elapsed_seconds=round(time.monotonic() - started, 3),
            inputs=prepared.inputs,
            rows=dict(ledger.tally.as_dict()),
            distinct_addresses=prepared.intake.distinct,
            rows_read=facts.rows_read,
            input_error=str(stream.error) if stream.error else None,
            reports_error=str(ledger.broken) if ledger.broken else None,
            reports=[str(path) for path in ledger.reports.paths] if ledger.reports else [],
        )

    def _write_summary(self, summary: Summary) -> None:
        """summary.json, then the ``latest`` pointer; a failure is said, and is the run's
        reports error (exit 74), never a crash."""
        try:
            write_json_atomic(summary.run_dir / "summary.json", summary.to_json())
            # The directory that holds the run: a resumed one may be outside --reports-dir,
            # where a link named by its name alone would point at nothing.
            _point_latest(summary.run_dir.parent, summary.run_dir)
        except OSError as exc:
            detail = f"{summary.run_dir / 'summary.json'}: {exc.strerror or exc}"
            log.error("summary_unwritable", error=detail)
            summary.reports_error = summary.reports_error or detail
            summary.exit_code = most_urgent((summary.exit_code, ExitCode.REPORTS_UNWRITABLE))

    # -- plan -----------------------------------------------------------------------------------

    def plan(self) -> Summary:
        """``plan``: everything but sending; synchronous."""
        self._start()
        with logs.run_bound(self.run_id), ThreadPoolExecutor(1, "fingerprint") as hashing:
            return self._plan(hashing)

    def _start(self) -> None:
        """A Run is one run: its id names one run directory."""
        if self._started:
            raise RuntimeError("this Run has run: make a new Run (or call run()) for another")
        self._started = True

    def _plan(self, hashing: Executor) -> Summary:
        config = self.config
        shard = self._shard()
        self._open_reports_dir()
        prepared = self._prepare(None, shard, hashing)
        started = time.monotonic()
        log.info(
            "run_started",
            command=self.command,
            inputs=prepared.inputs,
            shard=str(shard) if shard else None,
            reports=str(prepared.run_dir),
        )
        batcher: Batcher[None] = Batcher(config.batch_size, config.max_body_bytes)
        fast = self._fast_lane(prepared, bodies=False)
        stream = fast or Stream(prepared.readers)
        items: Iterable[Record | fastlane.Block] = fast.items() if fast is not None else stream
        rows_read = 0

        def counted() -> Iterator[Any]:
            nonlocal rows_read
            for item in items:
                rows_read += item.count if isinstance(item, fastlane.Block) else 1
                yield item

        try:
            plan = make_plan(counted(), prepared.intake, batcher, prepared.ledger)
        finally:
            prepared.ledger.close()
        assert prepared.run_json is not None
        prepared.run_json.result()
        reports = prepared.ledger.reports
        assert reports is not None
        # A plan lands nothing: a header-only succeeded file would only suggest otherwise.
        reports.succeeded.path.unlink()
        facts = Facts(
            prepared.ledger.tally,
            rows_read,
            input_broken=stream.error is not None,
            reports_broken=prepared.ledger.broken is not None,
        )
        summary = self._summary(prepared, facts, started, stream)
        summary.shard = str(shard) if shard else None
        summary.reports = [str(reports.errors.path)]
        summary.plan = plan
        # What the errors report leaves out, for a reader of summary.json to add up.
        summary.requests = {"would_send": plan.requests, "members": plan.members}
        self._write_summary(summary)
        log.info(
            "run_finished",
            exit_code=int(summary.exit_code),
            would_send=plan.requests,
            **prepared.ledger.tally.as_dict(),
        )
        return summary


def _named_once(sources: Sequence[Input]) -> None:
    """Refuse an input named twice (under any spelling of its path): its rows would be
    reported twice under one name and line, which a report cannot tell apart, nor a
    resume."""
    seen: dict[object, str] = {}
    for source in sources:
        path = source.path if source.path == STDIN else Path(source.path).resolve()
        if path in seen:
            raise ConfigError(f"{source.path} is named twice (as {seen[path]} too): name it once")
        seen[path] = source.path


def _detail(result: Result) -> str:
    """What stopped a run, with the status and the API's code when there was an answer."""
    answer = " ".join(str(part) for part in (result.http_status, result.error_code) if part)
    return f"{result.error_msg} ({answer})" if answer else result.error_msg


def _point_latest(reports_dir: Path, run_dir: Path) -> None:
    """Make ``REPORTS_DIR/latest`` name the newest run, atomically."""
    link = reports_dir / LATEST
    tmp = reports_dir / f".{LATEST}.{secrets.token_hex(4)}"
    os.symlink(run_dir.name, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def new_run_id() -> str:
    """A run's name: when it started (UTC, to the second), and a random suffix."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


async def run(config: Config, **options: Any) -> Summary:
    """``vpc-members run``: post every valid row; see :class:`Run` for ``options``."""
    return await Run(config, "run", **options).execute()


async def sync(config: Config, **options: Any) -> Summary:
    """``vpc-members sync``: make each named channel hold exactly its inventory."""
    return await Run(config, "sync", **options).execute()


def plan(config: Config, **options: Any) -> Summary:
    """``vpc-members plan``: everything but sending (``summary.plan`` holds the counts)."""
    return Run(config, "plan", **options).plan()
