"""Every option of ``run``, ``sync`` and ``plan``, declared once.

:class:`Config` is what the Python API takes and what the command line builds: each field
carries, in its metadata, the flag's help, group, the commands it belongs to and how a
text (a flag, an environment variable, a config-file value) becomes a checked value. The
defaults, the limits and the names live here and nowhere else. This module imports only
the standard library, so ``vpc-members --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from worker.members import MAX_BODY_BYTES

COMMANDS: Final = ("run", "sync", "plan")
# An option's environment variable is this and its name (VPC_MEMBERS_MAX_PRUNE).
ENV_PREFIX: Final = "VPC_MEMBERS_"
# The variables of that prefix read besides the options': the config file's path
# (worker.cli), the credentials (worker.credentials) and the fast lane's switches
# (worker.fastlane). tests/test_cli.py holds every such name in the code to this list.
OTHER_VARIABLES: Final = frozenset(
    ENV_PREFIX + name
    for name in (
        "CONFIG",
        "TOKEN",
        "IAM_DOMAIN",
        "IAM_USER",
        "IAM_PASSWORD",
        "REFERENCE_LANE",
        "LANE_BLOCK",
        "LANE_SPLIT",
        "LANE_SPAN",
    )
)
SENDING: Final = frozenset({"run", "sync"})
EVERY: Final = frozenset(COMMANDS)
SYNC_ONLY: Final = frozenset({"sync"})


class Format(StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"


class Api(StrEnum):
    """Which product's path prefix to use; the bodies are the same."""

    ROMA = "roma"
    APIG = "apig"


class LogFormat(StrEnum):
    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Progress(StrEnum):
    AUTO = "auto"
    BAR = "bar"
    EVENTS = "events"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Option:
    """How one Config field is offered: on which commands, under which group, with which
    help, and how a text becomes its value (raising ValueError with a reason)."""

    help: str
    group: str
    commands: frozenset[str]
    parse: Callable[[str], Any]
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False  # a switch: given means true
    # Set in the environment or a config file for a command that has not got it, it is
    # still read, for that command to refuse: ignoring it would do what it asks not to.
    binding: bool = False


@dataclass(frozen=True, slots=True)
class Number:
    """How an option's text becomes a number ``kind`` reads, within ``low..high``."""

    kind: Callable[[str], Any]
    low: float
    high: float

    @property
    def __name__(self) -> str:  # argparse names the value's type after it
        return self.kind.__name__

    @property
    def bounds(self) -> str:
        return f"{self.low:.15g}..{self.high:.15g}"

    def __call__(self, text: str) -> Any:
        value = self.kind(text.strip())
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {text.strip()!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"must be {self.bounds}, got {value:.15g}")
        return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, got {text!r}") from None


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number, got {text!r}") from None


_ID: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def _identifier(text: str) -> str:
    if not _ID.fullmatch(text):
        raise ValueError(f"must be 1-64 letters, digits, '-' or '_', got {text!r}")
    return text


def _choice(kind: type[StrEnum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text.strip().lower())
        except ValueError:
            names = ", ".join(member.value for member in kind)
            raise ValueError(f"must be one of {names}, got {text!r}") from None

    parse.__name__ = kind.__name__.lower()
    return parse


def _text(text: str) -> str:
    return text


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("must not be empty")
    return Path(text)


def _file_path(text: str) -> Path:
    """A path that names a file (``.``, ``..`` or one ending in ``/`` names a directory)."""
    path = _path(text)
    if text.endswith("/") or path.name in ("", ".", ".."):
        raise ValueError(f"must name a file, got {text!r}")
    return path


def check_endpoint(text: str) -> str:
    """An API endpoint: ``https://`` or ``http://``, a host, an optional port, no path,
    no credentials. Raises ValueError saying what is wrong."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("https", "http"):
        raise ValueError(f"must start with https:// (or http://), got {text!r}")
    if not parts.hostname:
        raise ValueError(f"names no host: {text!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password; credentials go elsewhere")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"must be scheme://host[:port] only, got {text!r}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"has a bad port: {text!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


_SHARD: Final = re.compile(r"(auto|[0-9]+)/([0-9]+)")


def check_shard(text: str) -> str:
    """``I/N`` with 0 <= I < N, or ``auto/N`` (I from JOB_COMPLETION_INDEX at run time)."""
    found = _SHARD.fullmatch(text.strip())
    if found is None or int(found[2]) < 1:
        raise ValueError(f"must be I/N or auto/N with N >= 1, got {text!r}")
    if found[1] != "auto" and int(found[1]) >= int(found[2]):
        raise ValueError(f"the index must be 0..{int(found[2]) - 1}, got {text!r}")
    return text.strip()


def check_proxy(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be http://host:port (credentials may be in the URL)")
    return text.strip()


def _option(
    default: Any,
    help: str,
    group: str,
    commands: frozenset[str],
    parse: Callable[[str], Any],
    *,
    secret: bool = False,
    **extra: Any,
) -> Any:
    """A Config field that is an option; ``secret`` when its value may hold one (left out
    of the Config's repr, which a caller's log or traceback may show)."""
    return field(
        default=default,
        repr=not secret,
        metadata={"option": Option(help, group, commands, parse, **extra)},
    )


@dataclass(frozen=True, slots=True)
class Config:
    """One run's settings. Build one in Python, or let the command line build it:

    >>> Config(inputs=("servers.csv",), endpoint="https://apig.example.com", rate=20)

    Values are checked on construction (ValueError names the option). Credentials are not
    options: they come from the environment or files (see :mod:`worker.credentials`).
    """

    inputs: tuple[str, ...] = ()
    # -- inputs ------------------------------------------------------------------------------
    format: Format | None = _option(
        None,
        "format of stdin, or of an input whose name does not say",
        "inputs",
        EVERY,
        _choice(Format),
        choices=tuple(Format),
    )
    project_id: str | None = _option(
        None,
        "fills the project_id of rows that leave it empty",
        "channel identity",
        EVERY,
        _identifier,
        metavar="ID",
    )
    instance_id: str | None = _option(
        None,
        "fills the instance_id of rows that leave it empty",
        "channel identity",
        EVERY,
        _identifier,
        metavar="ID",
    )
    channel_id: str | None = _option(
        None,
        "fills the vpc_channel_id of rows that leave it empty",
        "channel identity",
        EVERY,
        _identifier,
        metavar="ID",
    )
    shard: str | None = _option(
        None,
        "handle only the channels of shard I of N (0-based); auto/N takes I from "
        "JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)",
        "inputs",
        EVERY,
        check_shard,
        metavar="I/N",
    )
    # -- batching ----------------------------------------------------------------------------
    batch_size: int = _option(
        100,
        "members per request at most",
        "batching",
        EVERY,
        Number(_whole, 1, 1000),
        metavar="N",
    )
    max_body_bytes: int = _option(
        1024 * 1024,
        "serialised request body at most (the gateway takes 12 MB)",
        "batching",
        EVERY,
        Number(_whole, 1024, MAX_BODY_BYTES),
        metavar="N",
    )
    # -- the API -----------------------------------------------------------------------------
    endpoint: str | None = _option(
        None,
        "https://host[:port] of the API; --region derives it",
        "the API",
        SENDING,
        check_endpoint,
        metavar="URL",
    )
    region: str | None = _option(
        None,
        "derive the endpoint (and the IAM endpoint) of this region, e.g. cn-north-4",
        "the API",
        SENDING,
        _identifier,
        metavar="REGION",
    )
    api: Api = _option(
        Api.ROMA,
        "path prefix: roma (/apic/) or apig (/apigw/)",
        "the API",
        SENDING,
        _choice(Api),
        choices=tuple(Api),
    )
    emulator: bool = _option(
        False,
        "start the embedded emulator (auto-creating channels) and run against it, in place "
        "of the endpoint and credentials set",
        "the API",
        SENDING,
        _text,
        flag=True,
    )
    allow_http: bool = _option(
        False,
        "send credentials over plain http:// to a host other than loopback",
        "the API",
        SENDING,
        _text,
        flag=True,
    )
    proxy: str | None = _option(
        None,
        "send through this HTTP proxy (default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY)",
        "the API",
        SENDING,
        check_proxy,
        metavar="URL",
        secret=True,
    )
    ca_bundle: Path | None = _option(
        None,
        "also trust the CAs in this PEM file (an endpoint with a private CA)",
        "the API",
        SENDING,
        _file_path,
        metavar="PATH",
    )
    insecure: bool = _option(
        False,
        "do not verify TLS certificates (dangerous)",
        "the API",
        SENDING,
        _text,
        flag=True,
    )
    # -- credentials -------------------------------------------------------------------------
    token_file: Path | None = _option(
        None,
        "read an X-Auth-Token from PATH (else VPC_MEMBERS_TOKEN)",
        "credentials",
        SENDING,
        _file_path,
        metavar="PATH",
    )
    iam_endpoint: str | None = _option(
        None,
        "IAM endpoint for password tokens (default: derived from --region)",
        "credentials",
        SENDING,
        check_endpoint,
        metavar="URL",
    )
    iam_password_file: Path | None = _option(
        None,
        "read the IAM password from PATH (else VPC_MEMBERS_IAM_PASSWORD)",
        "credentials",
        SENDING,
        _file_path,
        metavar="PATH",
    )
    # -- pace --------------------------------------------------------------------------------
    rate: float = _option(
        10.0,
        "requests per second at most, retries and reads included",
        "pace",
        SENDING,
        Number(_real, 0.01, 100_000),
        metavar="R",
    )
    concurrency: int = _option(
        8,
        "requests in flight at most; to hide latency L seconds at rate R you need about R*L",
        "pace",
        SENDING,
        Number(_whole, 1, 1024),
        metavar="N",
    )
    per_channel_concurrency: int = _option(
        1,
        "requests in flight for one channel at most (the service fails concurrent "
        "writes to one channel)",
        "pace",
        SENDING,
        Number(_whole, 1, 64),
        metavar="N",
    )
    timeout: float = _option(
        30.0,
        "seconds to wait for an answer once a request is written",
        "pace",
        SENDING,
        Number(_real, 0.1, 3600),
        metavar="SECONDS",
    )
    connect_timeout: float = _option(
        10.0,
        "seconds to open a connection",
        "pace",
        SENDING,
        Number(_real, 0.1, 600),
        metavar="SECONDS",
    )
    max_attempts: int = _option(
        5,
        "tries per request for 429, 5xx, timeouts and resets",
        "pace",
        SENDING,
        Number(_whole, 1, 100),
        metavar="N",
    )
    drain_timeout: float = _option(
        30.0,
        "on SIGINT/SIGTERM, how long requests in flight may finish",
        "pace",
        SENDING,
        Number(_real, 0, 3600),
        metavar="SECONDS",
    )
    # -- sync --------------------------------------------------------------------------------
    prune: bool = _option(
        False,
        "delete live members the inventory does not name",
        "sync",
        SYNC_ONLY,
        _text,
        flag=True,
    )
    max_prune: float = _option(
        50.0,
        "never prune a channel of more than this share of its live members",
        "sync",
        SYNC_ONLY,
        Number(_real, 0, 100),
        metavar="PERCENT",
    )
    dry_run: bool = _option(
        False,
        "read the live state and report what would change; send no write",
        "sync",
        SYNC_ONLY,
        _text,
        flag=True,
        binding=True,
    )
    # -- reports, state, logs ----------------------------------------------------------------
    reports_dir: Path = _option(
        Path("reports"),
        "each run writes DIR/<run-id>/",
        "reports and logs",
        EVERY,
        _path,
        metavar="DIR",
    )
    report_format: Format | None = _option(
        None,
        "csv or ndjson (default: the first input's format)",
        "reports and logs",
        EVERY,
        _choice(Format),
        choices=tuple(Format),
    )
    metrics_file: Path | None = _option(
        None,
        "write Prometheus metrics here at the end of every run (node_exporter's "
        "textfile collector)",
        "reports and logs",
        EVERY,
        _file_path,
        metavar="PATH",
    )
    resume: Path | None = _option(
        None,
        "continue the run in RUN_DIR with the same inputs: landed rows are not sent again",
        "resume and locking",
        SENDING,
        _path,
        metavar="RUN_DIR",
    )
    lock_file: Path | None = _option(
        None,
        "one run at a time (default: REPORTS_DIR/.lock)",
        "resume and locking",
        SENDING,
        _file_path,
        metavar="PATH",
    )
    log_format: LogFormat = _option(
        LogFormat.AUTO,
        "json (JSON lines) or console (for people); auto: console on a terminal, json otherwise",
        "reports and logs",
        EVERY,
        _choice(LogFormat),
        choices=tuple(LogFormat),
    )
    log_level: LogLevel = _option(
        LogLevel.INFO,
        "the least severe events logged",
        "reports and logs",
        EVERY,
        _choice(LogLevel),
        choices=tuple(LogLevel),
    )
    log_file: Path | None = _option(
        None, "log here instead of stderr", "reports and logs", EVERY, Path, metavar="PATH"
    )
    progress: Progress = _option(
        Progress.AUTO,
        "bar (a live line), events (a progress event every 10 s) or off; auto: bar on a "
        "terminal, events otherwise",
        "reports and logs",
        EVERY,
        _choice(Progress),
        choices=tuple(Progress),
    )

    def __post_init__(self) -> None:
        # Typed as a tuple, but a caller may pass anything: one string would be read as
        # one input a character.
        given: object = self.inputs
        if not isinstance(given, tuple | list) or not all(
            isinstance(name, str | Path) for name in given
        ):
            raise ValueError(f"inputs: a sequence of paths (or '-'), got {given!r}")
        object.__setattr__(self, "inputs", tuple(map(str, given)))
        for name, option in options().items():
            value = getattr(self, name)
            if value is None:
                if default(name) is not None:
                    # None would turn a bound off (timeout) or break a run midway (api).
                    raise ValueError(f"{flag(name)}: must be given, got None")
                continue
            if option.flag:
                # A switch is True or False: "false", a non-empty string, would be true.
                if type(value) is not bool:
                    raise ValueError(f"{flag(name)}: must be True or False, got {value!r}")
                continue
            try:
                checked = option.parse(str(value))
            except ValueError as exc:
                raise ValueError(f"{flag(name)}: {exc}") from None
            # Kept as parsed even when it compares equal: "csv" == Format.CSV, but only the
            # latter has a .value; Decimal("5") == 5.0, but is no float.
            object.__setattr__(self, name, checked)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def options() -> Mapping[str, Option]:
    """Every option, by Config field name, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(Config) if f.metadata}


def default(name: str) -> Any:
    """The default value of a Config field."""
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


def variable(name: str) -> str:
    """The environment variable of a Config field (``max_prune`` -> ``VPC_MEMBERS_MAX_PRUNE``)."""
    return ENV_PREFIX + name.upper()


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """The names in ``env`` that look like a setting and are none, sorted: most often a
    misspelt option, which would otherwise be ignored without a word."""
    known = OTHER_VARIABLES.union(map(variable, options()))
    return sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known)


def flag(name: str) -> str:
    """The command-line flag of a Config field (``max_prune`` -> ``--max-prune``)."""
    return "--" + name.replace("_", "-")
