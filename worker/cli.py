"""The command line: ``vpc-members run|sync|plan|merge|emulator``.

Every option of ``run``, ``sync`` and ``plan`` is a :class:`~worker.config.Config` field,
and can come from a flag, the environment (``VPC_MEMBERS_<OPTION>``, e.g.
``VPC_MEMBERS_RATE=50``) or a TOML file given with ``--config`` (keys are option names,
``rate = 50`` or ``per-channel-concurrency = 2``; one file serves every command: a key a
command does not use is ignored there, an unknown key is refused). Flags beat the
environment, which beats the config file, which beats the defaults.

Only the command being run is built and imported, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from worker import __version__
from worker.config import COMMANDS, ENV_PREFIX, Config, Number, Option, flag, options, variable
from worker.config import default as config_default
from worker.exits import ExitCode

_HELP: Final = {
    "run": "validate, dedupe, batch and post the inventory; report every row",
    "sync": "make each channel the inventory names hold exactly its inventory",
    "plan": "everything but sending: counts per channel, invalid and duplicate rows",
    "merge": "join the run directories of shards into one set of reports",
    "emulator": "serve an emulator of the VPC channel members API on loopback",
}

_DESCRIPTION: Final = {
    "run": (
        "Read the inputs as one stream, validate every row, keep the first row of each "
        "address per channel, and post the rest in batches, concurrently and under one "
        "rate limit. Reports go to REPORTS_DIR/<run-id>/: succeeded, errors, summary.json."
    ),
    "sync": (
        "For each channel the inventory names (and no other), read its live members, "
        "send only the members that are new or differ, and with --prune delete the live "
        "members the inventory does not name. --dry-run shows the diff and sends no "
        "write. Reports: succeeded (with created/updated/unchanged), errors, extras (the "
        "live members not named, and their fate), channels.csv, summary.json."
    ),
    "plan": (
        "Validate, dedupe and batch as `run` would, without sending anything. Prints "
        "members, duplicates, invalid rows and requests per channel; writes the invalid "
        "and duplicate rows to a report directory."
    ),
    "merge": (
        "Join the run directories of the shards of one inventory (--shard I/N) into one "
        "set of reports and one summary that adds up. Refuses runs that do not belong "
        "together."
    ),
}

_CREDENTIALS_HELP: Final = """\
credentials (never a flag value: flags show up in `ps`); set one kind (two: exit 2):
  VPC_MEMBERS_TOKEN or --token-file PATH     a static X-Auth-Token
  HUAWEICLOUD_SDK_AK + HUAWEICLOUD_SDK_SK    AK/SK request signing (+ _SECURITY_TOKEN for
                                             temporary keys; or the SDK's credentials file)
  VPC_MEMBERS_IAM_DOMAIN/_USER/_PASSWORD     an IAM password token, renewed before expiry
"""

_SETTINGS_HELP: Final = """\
settings: every option is also VPC_MEMBERS_<OPTION> (VPC_MEMBERS_MAX_PRUNE=20; a switch is
  1/0, true/false, yes/no) or a key of --config FILE.toml (max-prune = 20); a flag beats
  the environment, which beats the file; a VPC_MEMBERS_ name that is no setting is
  logged (variable_unknown) and ignored
"""

_EXIT_HELP: Final = """\
exit codes:
  0  everything landed (sync: in sync)       5  no valid data row (none, or all invalid)
  1  some valid rows (or removals) failed    6  sync: a guard kept a channel from pruning
  2  usage, configuration or input error     7  sync --dry-run: changes are pending
  3  stopped: credentials, TLS, endpoint     70 crash (a bug; the traceback is in the log)
     unreachable or answering oddly          74 a report file could not be written
  4  only invalid input rows did not land    75 another run holds the lock
  130/143  interrupted by SIGINT/SIGTERM
"""

_EPILOG: Final = {
    "run": f"""\
{_CREDENTIALS_HELP}
examples:
  # rehearse against the embedded emulator
  vpc-members run inputs/sample.csv --emulator

  # a real migration, 20 requests a second, reports under /var/lib/vpc-members
  export VPC_MEMBERS_TOKEN=...    # or --token-file ~/.config/vpc-members/token
  vpc-members run servers.csv.gz --region cn-north-4 \\
      --project-id 0b3c... --instance-id 8f1a... --rate 20 --reports-dir /var/lib/vpc-members

  # several files as one stream; stdin needs --format
  zcat part1.ndjson.gz | vpc-members run - more.csv --format ndjson --emulator

  # continue a run that was interrupted or crashed
  vpc-members run servers.csv --resume reports/20261127T101500Z-3fa2c1 --endpoint ...

{_SETTINGS_HELP}
{_EXIT_HELP}""",
    "sync": f"""\
{_CREDENTIALS_HELP}
examples:
  # what would change, channel by channel; sends no write
  vpc-members sync servers.csv --emulator --dry-run --prune

  # make the channels hold exactly the inventory, removing what it does not name
  vpc-members sync servers.csv --endpoint https://apig.example.com --prune --max-prune 20

{_SETTINGS_HELP}
{_EXIT_HELP}""",
    "plan": f"""\
examples:
  vpc-members plan inputs/sample.csv
  vpc-members plan servers.ndjson.gz --channel-id 5b7e... --batch-size 50

{_SETTINGS_HELP}
{_EXIT_HELP}""",
    "merge": """\
examples:
  vpc-members merge reports/shard-0/2026... reports/shard-1/2026... --out reports/merged

exit codes: the most urgent of the shards' own (see run --help); 2 when the runs cannot
be read or do not belong together, or --out exists
""",
}


class UsageError(Exception):
    """A bad option value from a flag, the environment or the config file."""


def _typed(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(option.parse, "__name__", "value")
    return parse


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CSV or NDJSON inventory (.csv, .ndjson, .jsonl, optionally .gz), or - for stdin",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, option in options().items():
        if command not in option.commands:
            continue
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        default = config_default(name)
        shown = "" if default in (None, False) else f" (default: {default})"
        if isinstance(option.parse, Number):
            shown += f" [{option.parse.bounds}]"
        if option.flag:
            group.add_argument(
                flag(name),
                dest=name,
                action="store_true",
                help=option.help,
                default=argparse.SUPPRESS,
            )
        else:
            group.add_argument(
                flag(name),
                dest=name,
                type=_typed(option),
                metavar=option.metavar
                or ("{" + ",".join(option.choices) + "}" if option.choices else name.upper()),
                help=option.help.replace("%", "%%") + shown,
                default=argparse.SUPPRESS,
            )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="read options from TOML (env VPC_MEMBERS_CONFIG)",
        default=argparse.SUPPRESS,
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own arguments are built (and imported)."""
    parser = argparse.ArgumentParser(
        prog="vpc-members",
        # A shortened flag (--max-prun) would be taken for the one it begins: in a crontab,
        # a typo should fail loudly, not mean something.
        allow_abbrev=False,
        description=(
            "Load backend servers from CSV/NDJSON inventories into API-gateway VPC channels, "
            "and report what happened to every row."
        ),
        epilog="Run `vpc-members COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter
    for name, help_line in _HELP.items():
        if name == "emulator":
            sub = commands.add_parser(name, help=help_line, allow_abbrev=False)
            if command == name:
                from worker.emulator import cli as emulator_cli

                sub.description = emulator_cli.DESCRIPTION
                sub.formatter_class = formatter
                emulator_cli.add_arguments(sub)
            else:
                sub.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        sub = commands.add_parser(
            name,
            help=help_line,
            allow_abbrev=False,
            description=_DESCRIPTION[name],
            epilog=_EPILOG[name],
            formatter_class=formatter,
        )
        if name == "merge":
            sub.add_argument(
                "runs", nargs="+", metavar="RUN_DIR", help="the shards' run directories"
            )
            sub.add_argument(
                "--out",
                type=Path,
                required=True,
                metavar="DIR",
                help="where the merged reports go (created; must not exist)",
            )
        elif command == name:
            _add_options(sub, name)
        else:
            sub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in _HELP), None)


def _from_text(option: Option, value: object, origin: str) -> Any:
    if option.flag:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{origin}: expected true or false, got {value!r}")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise UsageError(f"{origin}: expected a single value, got {value!r}")
    try:
        return option.parse(str(value))
    except ValueError as exc:
        raise UsageError(f"{origin}: {exc}") from None


def _config_file(path: Path) -> dict[str, object]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path}: {exc}") from exc
    known = options()
    values: dict[str, object] = {}
    unknown: list[str] = []
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in values:
            raise UsageError(f"config file {path}: {flag(name)[2:]} is given twice ({key!r})")
        if name in known:
            values[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise UsageError(f"config file {path}: unknown option(s) {', '.join(sorted(unknown))}")
    return values


def to_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """The Config of a parsed ``run``, ``sync`` or ``plan``: flags over the environment
    over the config file over the defaults."""
    given = vars(args)
    config_path = given.get("config") or (
        Path(env[f"{ENV_PREFIX}CONFIG"]) if env.get(f"{ENV_PREFIX}CONFIG") else None
    )
    from_file = _config_file(config_path) if config_path is not None else {}
    values: dict[str, object] = {}
    for name, option in options().items():
        if args.command not in option.commands and not option.binding:
            continue
        if name in given:
            if name == "proxy" and urlsplit(str(given[name])).password:
                # Flags show in the process list, to every user of the machine.
                raise UsageError(
                    f"--proxy: a password on the command line shows in the process list; "
                    f"set {variable(name)} (or HTTPS_PROXY) to the URL instead"
                )
            values[name] = given[name]
            continue
        named = variable(name)
        if env.get(named) is not None:
            values[name] = _from_text(option, env[named], named)
        elif name in from_file:
            values[name] = _from_text(option, from_file[name], f"{flag(name)[2:]} in {config_path}")
    try:
        return Config(inputs=tuple(args.inputs), **values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse(
    argv: Sequence[str] | None, env: Mapping[str, str]
) -> tuple[argparse.Namespace, Config | None]:
    """Parse ``argv``; the Config too for ``run``, ``sync`` and ``plan``."""
    args = _arguments(argv)
    return args, _configured(args, env)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(arguments))
    args, unknown = parser.parse_known_args(arguments)
    if unknown:
        # Refused by the command's parser, with its usage, as a bad value is; argparse
        # would refuse them with the top-level usage, which lists no flag.
        command = _subparser(parser, args.command)
        known = [text for action in command._actions for text in action.option_strings]
        close = difflib.get_close_matches(unknown[0].partition("=")[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command``, one of ``parser``'s subcommands."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    raise LookupError(command)


def _configured(args: argparse.Namespace, env: Mapping[str, str]) -> Config | None:
    return to_config(args, env) if args.command in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before a command's own handling starts (while it is imported, say): it
        # did nothing yet, and says so in one line.
        print("vpc-members: interrupted before it sent anything", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _arguments(arguments)
    except SystemExit as exc:  # argparse's refusal of a flag (or --help, which is 0)
        if exc.code == ExitCode.USAGE:
            _refusal_metrics(_command_of(arguments), _flag_value(arguments, "metrics_file"))
        raise
    try:
        config = _configured(args, os.environ)
    except UsageError as exc:
        print(f"vpc-members: error: {exc}", file=sys.stderr)
        _refusal_metrics(args.command, getattr(args, "metrics_file", None))
        return ExitCode.USAGE
    if args.command == "emulator":
        from worker.emulator import cli as emulator_cli

        code: int = emulator_cli.main(args)
        return code
    from worker import commands

    if args.command == "merge":
        return commands.merge(args.runs, args.out)
    assert config is not None
    return commands.execute(args.command, config)


def _flag_value(arguments: Sequence[str], name: str) -> str | None:
    """The value ``arguments`` give an option's flag (``--flag V`` or ``--flag=V``), read
    without the parser, which refused them."""
    flag_text = flag(name)
    for i, argument in enumerate(arguments):
        if argument == flag_text and i + 1 < len(arguments):
            return arguments[i + 1]
        if argument.startswith(flag_text + "="):
            return argument.partition("=")[2]
    return None


def _refusal_metrics(command: str | None, given: object) -> None:
    """The metrics of a run refused for its settings, where a flag (``given``) or the
    environment names their file: a cron job whose settings broke must not go on showing
    its last success. (A config file that could not be read cannot name it.)"""
    text = given or os.environ.get(variable("metrics_file"))
    if not text or command not in COMMANDS:
        return
    try:
        path = options()["metrics_file"].parse(str(text))
    except ValueError:
        return  # it names no file: the refusal said so
    from worker.metrics import write_metrics

    try:
        write_metrics(path, command, ExitCode.USAGE, time.time())
    except OSError as exc:
        print(f"vpc-members: error: --metrics-file {path}: {exc.strerror or exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
