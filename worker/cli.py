"""The command line: ``vpc-members run|plan|emulator``.

Every option of ``run`` and ``plan`` can also come from the environment
(``VPC_MEMBERS_<OPTION>``, e.g. ``VPC_MEMBERS_RATE=50``) or from a TOML file given with
``--config`` (keys are option names, ``rate = 50`` or ``per-channel-concurrency = 2``).
Flags beat the environment, which beats the config file, which beats the defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from worker import __version__
from worker.emulator import cli as emulator_cli
from worker.inventory import Format
from worker.protocol import Api

ENV_PREFIX: Final = "VPC_MEMBERS_"
EXIT_USAGE: Final = 2

_RUN_EPILOG: Final = """\
the token:
  The API token is read from the environment variable VPC_MEMBERS_TOKEN or from the file
  named by --token-file, never from a flag value (flags show up in `ps`).

examples:
  # rehearse against the embedded emulator
  vpc-members run inputs/sample.csv --emulator

  # a real migration, 20 requests a second, reports under /var/lib/vpc-members
  export VPC_MEMBERS_TOKEN=...    # or --token-file ~/.config/vpc-members/token
  vpc-members run servers.csv.gz --endpoint https://apig.example.com \\
      --project-id 0b3c... --instance-id 8f1a... --rate 20 --reports-dir /var/lib/vpc-members

  # several files as one stream; stdin needs --format
  zcat part1.ndjson.gz | vpc-members run - more.csv --format ndjson --emulator

  # continue a run that was interrupted or crashed
  vpc-members run servers.csv --resume reports/20261127T101500Z-3fa2c1 --endpoint ...

exit codes:
  0  every row landed or was a duplicate     1  some rows are invalid or did not land
  2  usage, configuration or input error     3  refused: the token (401), or the
  75 another run holds the lock                 endpoint's TLS certificate
  130/143  interrupted by SIGINT/SIGTERM
"""

_PLAN_EPILOG: Final = """\
examples:
  vpc-members plan inputs/sample.csv
  vpc-members plan servers.ndjson.gz --channel-id 5b7e... --batch-size 50
"""


class UsageError(Exception):
    """A bad option value from a flag, the environment or the config file."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CSV or NDJSON inventory (.csv, .ndjson, .jsonl, optionally .gz), or - for stdin",
    )
    parser.add_argument(
        "--format",
        type=Format,
        choices=list(Format),
        help="format of stdin, or of an input whose name does not say",
    )
    ids = parser.add_argument_group("channel identity (fills a column that is absent or empty)")
    ids.add_argument("--project-id", metavar="ID")
    ids.add_argument("--instance-id", metavar="ID")
    ids.add_argument("--channel-id", metavar="ID", help="the vpc_channel_id")
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--batch-size",
        type=_positive_int,
        default=100,
        metavar="N",
        help="members per request at most (default: %(default)s)",
    )
    batching.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=1024 * 1024,
        metavar="N",
        help="serialised request body at most (default: %(default)s; the gateway takes 12 MB)",
    )
    out = parser.add_argument_group("reports and logs")
    out.add_argument(
        "--reports-dir",
        type=Path,
        default=Path("reports"),
        metavar="DIR",
        help="each run writes DIR/<run-id>/ (default: %(default)s)",
    )
    out.add_argument(
        "--report-format",
        type=Format,
        choices=list(Format),
        help="csv or ndjson (default: the first input's format)",
    )
    out.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="console on a terminal, JSON lines otherwise (default: %(default)s)",
    )
    out.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    out.add_argument("--log-file", type=Path, metavar="PATH", help="log here instead of stderr")
    out.add_argument(
        "--progress",
        choices=("auto", "bar", "events", "off"),
        default="auto",
        help="a live display on a terminal, a progress event every 10 s otherwise",
    )
    parser.add_argument("--config", type=Path, metavar="FILE.toml", help="read options from TOML")


def _run_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("the API")
    target.add_argument(
        "--endpoint",
        metavar="URL",
        help="scheme://host[:port] of the API (env VPC_MEMBERS_ENDPOINT)",
    )
    target.add_argument(
        "--api",
        type=Api,
        choices=list(Api),
        default=Api.ROMA,
        help="path prefix: roma (/apic/) or apig (/apigw/) (default: %(default)s)",
    )
    target.add_argument("--token-file", type=Path, metavar="PATH", help="read the token from PATH")
    target.add_argument(
        "--emulator",
        action="store_true",
        help="start the embedded emulator (auto-creating channels) and run against it",
    )
    target.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="PATH",
        help="also trust the CAs in this PEM file (an endpoint with a private CA)",
    )
    target.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (dangerous)"
    )
    pace = parser.add_argument_group("pace")
    pace.add_argument(
        "--rate",
        type=_positive_float,
        default=10.0,
        metavar="R",
        help="requests per second at most, retries included (default: %(default)s)",
    )
    pace.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="requests in flight at most (default: %(default)s); "
        "to hide latency L seconds at rate R you need about R*L",
    )
    pace.add_argument(
        "--per-channel-concurrency",
        type=_positive_int,
        default=1,
        metavar="N",
        help="requests in flight for one channel at most (default: %(default)s)",
    )
    pace.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="for one request (default: %(default)s)",
    )
    pace.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=5,
        metavar="N",
        help="tries per batch for 429, 5xx, timeouts and resets (default: %(default)s)",
    )
    pace.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long requests in flight may finish (default: %(default)s)",
    )
    state = parser.add_argument_group("resume and locking")
    state.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR with the same inputs: landed rows are not sent again",
    )
    state.add_argument(
        "--lock-file",
        type=Path,
        metavar="PATH",
        help="one run at a time (default: REPORTS_DIR/.lock)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpc-members",
        description=(
            "Load backend servers from CSV/NDJSON inventories into API-gateway VPC channels, "
            "and report what happened to every row."
        ),
        epilog="Run `vpc-members COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter

    run = commands.add_parser(
        "run",
        help="validate, dedupe, batch and post the inventory; report every row",
        description=(
            "Read the inputs as one stream, validate every row, keep the first row of each "
            "address per channel, and post the rest in batches, concurrently and under one "
            "rate limit. Reports go to REPORTS_DIR/<run-id>/: succeeded, errors, summary.json."
        ),
        epilog=_RUN_EPILOG,
        formatter_class=formatter,
    )
    _common(run)
    _run_options(run)
    run.set_defaults(handler="run")

    plan = commands.add_parser(
        "plan",
        help="everything but posting: counts per channel, invalid and duplicate rows",
        description=(
            "Validate, dedupe and batch as `run` would, without sending anything. Prints "
            "members, duplicates, invalid rows and requests per channel; writes the invalid "
            "and duplicate rows to a report directory."
        ),
        epilog=_PLAN_EPILOG,
        formatter_class=formatter,
    )
    _common(plan)
    plan.set_defaults(handler="plan")

    emulator = commands.add_parser(
        "emulator",
        help="serve an emulator of the VPC channel members API on loopback",
        description=emulator_cli.DESCRIPTION,
        formatter_class=formatter,
    )
    emulator_cli.add_arguments(emulator)
    emulator.set_defaults(handler="emulator")
    return parser


def _layered_defaults(
    sub: argparse.ArgumentParser, config: Mapping[str, object], env: Mapping[str, str]
) -> dict[str, object]:
    """Defaults from the config file, then the environment, each checked by the option's type."""
    defaults: dict[str, object] = {}
    for action in sub._actions:  # argparse offers no public iterator over its options
        if not action.option_strings or action.dest in ("help", "config"):
            continue
        flag = action.option_strings[-1].lstrip("-")
        for origin, value in (
            (f"{flag} in the config file", config.get(flag, config.get(action.dest))),
            (f"{ENV_PREFIX}{action.dest.upper()}", env.get(f"{ENV_PREFIX}{action.dest.upper()}")),
        ):
            if value is not None:
                defaults[action.dest] = _convert(action, value, origin)
    return defaults


def _convert(action: argparse.Action, value: object, origin: str) -> object:
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{origin}: expected true or false, got {value!r}")
    if not isinstance(value, str | int | float):
        raise UsageError(f"{origin}: expected a single value, got {value!r}")
    try:
        converted = action.type(str(value)) if callable(action.type) else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise UsageError(f"{origin}: {exc}") from exc
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise UsageError(f"{origin}: {value!r} is not one of {choices}")
    return converted


def parse(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    """Parse ``argv`` with the environment and ``--config`` file as layered defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler == "emulator":
        return args
    sub = _subparser(parser, args.command)
    config_path = args.config or (
        Path(env[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in env else None
    )
    config: dict[str, object] = {}
    if config_path is not None:
        try:
            config = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"config file {config_path}: {exc}") from exc
        known = {a.dest for a in sub._actions} | {
            a.option_strings[-1].lstrip("-") for a in sub._actions if a.option_strings
        }
        unknown = sorted(set(config) - known)
        if unknown:
            raise UsageError(f"config file {config_path}: unknown option(s) {', '.join(unknown)}")
    sub.set_defaults(**_layered_defaults(sub, config, env))
    return parser.parse_args(argv)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv, os.environ)
    except UsageError as exc:
        print(f"vpc-members: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.handler == "emulator":
        code: int = emulator_cli.main(args)
        return code
    from worker import commands

    return commands.run(args) if args.handler == "run" else commands.plan(args)


if __name__ == "__main__":
    sys.exit(main())
