"""The emulator's lifecycle: build it, serve it on a loopback port, stop it, dump it."""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import orjson
import structlog
from aiohttp import web

from worker.emulator.app import Api, build_app
from worker.emulator.config import EmulatorConfig
from worker.emulator.faults import FaultPlan, FaultRates
from worker.emulator.iam import Tokens
from worker.emulator.state import EmulatorState
from worker.emulator.stats import Stats
from worker.members import is_loopback

log = structlog.get_logger(__name__)


def _rng(seed: int | None, stream: str) -> random.Random:
    # Separate streams, so how many ids a request makes cannot shift the fault draws.
    return random.Random(f"{stream}:{seed}") if seed is not None else random.Random()


class Emulator:
    """An emulator of the VPC channel members API, served in the running event loop.

    Use as ``async with Emulator(config) as emu:``; on entry it accepts connections at
    ``emu.url`` (port 0 in the config means an ephemeral port). ``state`` and ``stats``
    are live and safe to read between awaits. On exit it stops serving (waiting briefly
    for requests in flight) and writes ``config.dump`` when set.

    ``wallclock`` (Unix seconds: token lifetimes, signature dates, ``create_time``) and
    ``sleep`` (the answer delays) let tests move time instead of waiting for it.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        wallclock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config = config if config is not None else EmulatorConfig()
        self.state = EmulatorState.from_specs(
            config.channels,
            _rng(config.seed, "ids"),
            auto_create=config.auto_create,
            max_members_per_channel=config.max_members_per_channel,
            max_ecs_members_per_channel=config.max_ecs_members_per_channel,
        )
        self.stats = Stats()
        rates = FaultRates(
            fail=config.fail_rate,
            fail_after_commit=config.fail_after_commit_rate,
            reset=config.reset_rate,
            slow=config.slow_rate,
            slow_ms=config.slow_ms,
            latency_ms=config.latency_ms,
            jitter_ms=config.jitter_ms,
        )
        self.arrivals: list[float] | None = [] if config.record_arrivals else None
        self.api = Api(
            config,
            self.state,
            self.stats,
            FaultPlan(rates, _rng(config.seed, "faults")),
            Tokens(config.iam_users, config.token_ttl, _rng(config.seed, "tokens")),
            _rng(config.seed, "request-ids"),
            arrivals=self.arrivals,
            wallclock=wallclock,
            sleep=sleep,
        )
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._tls = _tls_context(config)

    @property
    def port(self) -> int:
        """The port accepting connections; only valid once started."""
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT`` (IPv6 hosts bracketed); only valid once started."""
        scheme = "https" if self._tls is not None else "http"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Start accepting connections."""
        runner = web.AppRunner(
            build_app(self.api), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=self._tls)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("emulator_started", url=self.url, channels=len(self.state.channels))
        if not is_loopback(self.config.host):
            # It accepts demo credentials and holds whatever it is sent: say so out loud.
            log.warning("emulator_exposed", host=self.config.host, url=self.url)
            print(
                f"vpc-members emulator: warning: bound to {self.config.host}, reachable from "
                "other machines; it is a test double with demo credentials",
                file=sys.stderr,
            )

    async def stop(self) -> None:
        """Stop serving, then write the dump file if configured. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        log.info(
            "emulator_stopped",
            requests=self.stats.requests,
            members=self.state.member_count(),
        )
        if self.config.dump is not None:
            await asyncio.to_thread(write_dump, self.config.dump, self.state)
            log.info("emulator_dumped", path=str(self.config.dump))

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


def _tls_context(config: EmulatorConfig) -> ssl.SSLContext | None:
    """The server side of TLS when a certificate is configured; OSError for unreadable
    or mismatched PEM files, before anything listens."""
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except FileNotFoundError as exc:
        # ssl names no file; say which one is missing.
        paths = (config.tls_cert, config.tls_key)
        missing = next((p for p in paths if p and not p.exists()), config.tls_cert)
        raise FileNotFoundError(exc.errno, exc.strerror, str(missing)) from exc
    return context


def write_dump(path: Path, state: EmulatorState) -> None:
    """Write the state as JSON, atomically: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(state.to_json(), option=orjson.OPT_INDENT_2))
    os.replace(partial, path)
