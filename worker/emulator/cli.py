"""``vpc-members emulator``: serve the emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import signal
import ssl
import sys
from pathlib import Path
from typing import Final

import structlog

from worker import logs
from worker.config import LogFormat, LogLevel, default, flag, options
from worker.emulator.config import (
    DEFAULT_BODY_BUDGET_MB,
    DEFAULT_ECS_MEMBERS,
    DEFAULT_TOKEN,
    DEFAULT_TOKEN_TTL,
    EmulatorConfig,
    load_channels,
    parse_aksk,
)
from worker.emulator.iam import parse_iam_user
from worker.emulator.server import Emulator

DESCRIPTION = """\
Serve an emulator of the ROMA Connect / APIG "add or update backend members" API on
loopback, under both /v2/{project_id}/apic/... and /v2/{project_id}/apigw/...:
POST, PUT and GET .../vpc-channels/{vpc_channel_id}/members, DELETE .../members/{id};
and IAM's POST /v3/auth/tokens for --iam-user logins. Requests authenticate with an
X-Auth-Token (--token, or one IAM issued) or an AK/SK signature (--aksk, as the official
SDK signs). Every answer carries X-Request-Id. It prints "listening on
http(s)://HOST:PORT" once it accepts connections and runs until SIGINT or SIGTERM.
GET /_emulator/stats and /_emulator/state show what it did. It warns when bound to an
address other machines can reach. Credentials given as flags show in the process list:
use throwaway ones.

examples:
  # any project, instance and channel exists on first use; token "demo-token"
  vpc-members emulator --auto-create

  # only the channels of a fixture, 50 requests/s per project, flaky answers
  vpc-members emulator --port 0 --channels channels.json --rate 50 \\
      --fail-rate 0.05 --fail-after-commit-rate 0.02 --reset-rate 0.01 --seed 7

  # a slow service, a second read-only token, the final state written on exit
  vpc-members emulator --auto-create --latency-ms 40 --jitter-ms 20 \\
      --read-only-token viewer --dump state.json

  # the official SDK signing with an AK/SK; an IAM user whose tokens live 10 minutes;
  # overlapping writes to one channel fail as they do on the service
  vpc-members emulator --auto-create --aksk AKTEST:sktest --iam-user acme/ops:pw \\
      --token-ttl 600 --concurrent-write-conflicts --latency-ms 50

channel fixture (--channels):
  {"channels": [{"project_id": "p1", "instance_id": "i1",
                 "vpc_channel_id": "c1", "port": 80, "max_members": 200}]}

exit codes: 0 stopped by SIGINT/SIGTERM, 1 cannot listen, 2 bad flags or fixture
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags; their names match :class:`EmulatorConfig` fields."""
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port to bind, 0 for any free one (default %(default)s)",
    )
    serve.add_argument(
        "--token",
        dest="tokens",
        action="append",
        metavar="T",
        help=f"accepted X-Auth-Token; repeatable (default {DEFAULT_TOKEN})",
    )
    serve.add_argument(
        "--read-only-token",
        dest="read_only_tokens",
        action="append",
        default=[],
        metavar="T",
        help="X-Auth-Token that may GET but gets 403 APIG.1005 otherwise; repeatable",
    )
    serve.add_argument(
        "--aksk",
        action="append",
        default=[],
        metavar="AK:SK",
        help="an access key pair that may sign requests (SDK-HMAC-SHA256) instead of a "
        "token; repeatable. A bad signature or an unknown AK gets 401 APIG.0301; the "
        "X-Sdk-Date may be 15 minutes off. X-Security-Token (any value) must be signed",
    )
    serve.add_argument(
        "--iam-user",
        dest="iam_users",
        action="append",
        default=[],
        metavar="DOMAIN/USER:PASSWORD",
        help="a user that may get tokens at POST /v3/auth/tokens; repeatable",
    )
    serve.add_argument(
        "--token-ttl",
        type=float,
        default=DEFAULT_TOKEN_TTL,
        metavar="SECONDS",
        help="lifetime of IAM-issued tokens; past it they get 401 APIG.1002 "
        "(default %(default)g, 24 hours)",
    )
    serve.add_argument(
        "--body-budget-mb",
        type=int,
        default=DEFAULT_BODY_BUDGET_MB,
        metavar="MB",
        help="most request-body bytes held at once, from the first byte to the answer; "
        "a request that would pass it gets 503 APIG.0202 (default %(default)s, at least 12)",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="serve HTTPS with this certificate chain (and its key, unless --tls-key)",
    )
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument("--dump", type=Path, metavar="FILE", help="write the state here on exit")
    serve.add_argument(
        "--record-arrivals",
        action="store_true",
        help="record each API request's monotonic arrival time at GET /_emulator/arrivals",
    )
    channels = parser.add_argument_group("channels")
    channels.add_argument(
        "--channels", type=Path, metavar="FILE", help="JSON fixture of the channels that exist"
    )
    channels.add_argument(
        "--auto-create",
        action="store_true",
        help="unknown instances and channels exist on first use (port 80)",
    )
    channels.add_argument(
        "--max-members-per-channel",
        type=int,
        metavar="N",
        help="default channel member quota (403 APIG.3110 beyond)",
    )
    channels.add_argument(
        "--max-ecs-members-per-channel",
        type=int,
        metavar="N",
        default=DEFAULT_ECS_MEMBERS,
        help="ECS members (those with an ecs_id) a channel may hold, 403 APIG.3110 beyond: the "
        "vendor's default quota (default %(default)s; 0 for no cap)",
    )
    channels.add_argument(
        "--max-members-per-request",
        type=int,
        metavar="N",
        help="most members in one body (400 APIG.2003 beyond)",
    )
    limits = parser.add_argument_group("throttling and faults")
    limits.add_argument(
        "--rate", type=float, metavar="R", help="requests per second per project (429 beyond)"
    )
    limits.add_argument(
        "--burst", type=float, metavar="B", help="token-bucket size (default max(1, R/10))"
    )
    limits.add_argument("--seed", type=int, help="seed for fault draws and ids")
    for name, meaning in (
        ("fail", "answer 500 APIG.9999 and apply nothing"),
        ("fail-after-commit", "apply the change, then answer 500"),
        ("reset", "close the connection without answering"),
        ("slow", "answer --slow-ms late"),
    ):
        limits.add_argument(
            f"--{name}-rate", type=float, default=0.0, metavar="P", help=f"probability to {meaning}"
        )
    limits.add_argument(
        "--concurrent-write-conflicts",
        action="store_true",
        help="a write (POST/PUT/DELETE) to a channel that another write is still being "
        "answered for gets 500 APIG.9999 'database data synchronize failed' and applies "
        "nothing, as on the service",
    )
    for name, meaning in (
        ("slow", "extra delay of a slow answer"),
        ("latency", "delay of every answer"),
        ("jitter", "uniform ± spread on the latency"),
    ):
        limits.add_argument(f"--{name}-ms", type=int, default=0, metavar="MS", help=meaning)
    logged = parser.add_argument_group("logs")
    # The worker's own options, as its commands take them.
    for name, kind in (("log_format", LogFormat), ("log_level", LogLevel)):
        logged.add_argument(
            flag(name),
            choices=tuple(kind),
            default=default(name),
            help=f"{options()[name].help} (default %(default)s)",
        )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The config the flags describe; raises ValueError for bad values or fixtures."""
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        tokens=tuple(args.tokens or (DEFAULT_TOKEN,)),
        read_only_tokens=tuple(args.read_only_tokens),
        aksk=tuple(parse_aksk(text) for text in args.aksk),
        iam_users=tuple(parse_iam_user(text) for text in args.iam_users),
        token_ttl=args.token_ttl,
        channels=load_channels(args.channels) if args.channels is not None else (),
        auto_create=args.auto_create,
        max_members_per_channel=args.max_members_per_channel,
        max_ecs_members_per_channel=args.max_ecs_members_per_channel or None,
        max_members_per_request=args.max_members_per_request,
        rate=args.rate,
        burst=args.burst,
        seed=args.seed,
        fail_rate=args.fail_rate,
        fail_after_commit_rate=args.fail_after_commit_rate,
        reset_rate=args.reset_rate,
        slow_rate=args.slow_rate,
        slow_ms=args.slow_ms,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        concurrent_write_conflicts=args.concurrent_write_conflicts,
        body_budget_mb=args.body_budget_mb,
        dump=args.dump,
        record_arrivals=args.record_arrivals,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 for bad flags or fixtures."""
    if not structlog.is_configured():
        # stdout carries the "listening on" line that scripts wait for; logs go aside.
        logs.configure(args.log_format, args.log_level)
    try:
        config = config_from_args(args)
        emulator = Emulator(config)
    except (ValueError, OSError) as exc:
        print(f"vpc-members emulator: {_describe(exc)}", file=sys.stderr)
        return 2
    # Every stored member allocates a container, so the default young-generation threshold
    # (700) would collect every few requests: a fifth of the CPU at full load. The process
    # is the emulator's alone, so it may tune the collector for it.
    gc.set_threshold(100_000, 50, 100)
    try:
        asyncio.run(_serve(emulator))
    except OSError as exc:
        print(f"vpc-members emulator: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"--tls-cert/--tls-key: not a matching PEM certificate and key ({exc.reason})"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    # EmulatorConfig names its fields (it is the in-process API too); here they are flags.
    text = str(exc)
    name, _, rest = text.partition(" ")
    if name in _FIELDS:
        return f"--{name.replace('_', '-')} {rest}"
    return text


_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(EmulatorConfig))


async def _serve(emulator: Emulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with emulator:
        print(f"listening on {emulator.url}", flush=True)
        structlog.get_logger(__name__).info("emulator_listening", url=emulator.url)
        await stop.wait()
