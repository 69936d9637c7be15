"""The emulator's settings and its channel fixture format.

Field names match the command-line flags, so ``EmulatorConfig(**vars(args))``-style
construction and the README describe the same knobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from worker.emulator.iam import IamUser
from worker.members import INT_RANGES, MAX_BODY_BYTES, check_id

DEFAULT_TOKEN = "demo-token"  # noqa: S105 -- the documented demo token, not a secret
DEFAULT_PORT = 80
DEFAULT_TOKEN_TTL = 86_400.0
# The vendor's published default quota of ECS members in one channel (raised on request).
DEFAULT_ECS_MEMBERS = 10
"""IAM tokens live 24 hours."""
DEFAULT_BODY_BUDGET_MB = 64
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A VPC channel that exists from the start.

    ``port`` fills the port of members that do not give one; ``max_members`` caps the
    channel's member count (None: the config's ``max_members_per_channel``).
    """

    project_id: str
    instance_id: str
    vpc_channel_id: str
    port: int = DEFAULT_PORT
    max_members: int | None = None


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything the emulator can be told; every field has a working default.

    Rates are probabilities per API request in [0, 1]; times are milliseconds. ``rate``
    (requests per second per project) enables throttling; ``burst`` is the bucket size,
    ``max(1, rate / 10)`` when None, i.e. 100 ms worth of requests. ``seed`` makes the
    fault draws, the generated ids, request ids and tokens reproducible. ``tls_cert`` (a
    PEM chain, with the key in it or in ``tls_key``) serves HTTPS instead of HTTP.

    Quotas: ``max_members_per_channel`` caps every channel's members (None: unlimited,
    a fixture's ``max_members`` overrides it), ``max_ecs_members_per_channel`` its ECS
    members (those with an ``ecs_id``): the vendor's default of 10, None for no cap.

    Credentials: ``tokens`` and ``read_only_tokens`` are static ``X-Auth-Token`` values;
    ``aksk`` holds (AK, SK) pairs that may sign requests instead; ``iam_users`` may log
    in at ``POST /v3/auth/tokens`` for tokens that live ``token_ttl`` seconds. None of
    them appears in the ``repr``.

    ``concurrent_write_conflicts`` refuses a write to a channel that another write is
    still being handled for (500). ``body_budget_mb`` bounds the request bodies held at
    once (503 beyond). Invalid values raise ValueError.
    """

    host: str = "127.0.0.1"
    port: int = 0
    tokens: tuple[str, ...] = field(default=(DEFAULT_TOKEN,), repr=False)
    read_only_tokens: tuple[str, ...] = field(default=(), repr=False)
    aksk: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    iam_users: tuple[IamUser, ...] = ()
    token_ttl: float = DEFAULT_TOKEN_TTL
    channels: tuple[ChannelSpec, ...] = ()
    auto_create: bool = False
    max_members_per_channel: int | None = None
    max_ecs_members_per_channel: int | None = DEFAULT_ECS_MEMBERS
    max_members_per_request: int | None = None
    rate: float | None = None
    burst: float | None = None
    seed: int | None = None
    fail_rate: float = 0.0
    fail_after_commit_rate: float = 0.0
    reset_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: int = 0
    latency_ms: int = 0
    jitter_ms: int = 0
    concurrent_write_conflicts: bool = False
    body_budget_mb: int = DEFAULT_BODY_BUDGET_MB
    dump: Path | None = None
    record_arrivals: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("fail_rate", "fail_after_commit_rate", "reset_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for name in ("slow_ms", "latency_ms", "jitter_ms", "port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.port > 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        for name in (
            "max_members_per_channel",
            "max_ecs_members_per_channel",
            "max_members_per_request",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, got {self.rate}")
        if self.burst is not None:
            if self.rate is None:
                raise ValueError("burst needs rate")
            if not (self.burst >= 1 and math.isfinite(self.burst)):
                raise ValueError(f"burst must be at least 1, got {self.burst}")
        if not self.tokens:
            raise ValueError("at least one token is needed")
        if any(not ak or not sk for ak, sk in self.aksk):
            raise ValueError("an AK/SK pair needs both an AK and an SK")
        if not (self.token_ttl > 0 and math.isfinite(self.token_ttl)):
            raise ValueError(f"token_ttl must be a positive number, got {self.token_ttl}")
        if self.body_budget_mb * MB < MAX_BODY_BYTES:
            # Smaller, and a body the gateway accepts could never be read: 503 for ever.
            raise ValueError(
                f"body_budget_mb must be at least {MAX_BODY_BYTES // MB} (one largest body), "
                f"got {self.body_budget_mb}"
            )
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")

    @property
    def effective_burst(self) -> float | None:
        """The token-bucket size in force, or None when throttling is off."""
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else max(1.0, self.rate / 10)


def parse_aksk(text: str) -> tuple[str, str]:
    """Read ``AK:SK`` (the SK may hold ``:``); ValueError, without the SK, if a part is missing."""
    ak, colon, sk = text.partition(":")
    if not (colon and ak and sk):
        raise ValueError("an AK/SK pair is AK:SK")
    return ak, sk


def parse_channels(document: object) -> tuple[ChannelSpec, ...]:
    """Read a fixture ``{"channels": [{project_id, instance_id, vpc_channel_id, port?,
    max_members?}, ...]}``; raise ValueError naming the first bad entry.

    Other keys of an entry (such as the ``members`` of a state dump) are ignored.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("channels"), list):
        raise ValueError('a channel fixture is {"channels": [...]}')
    specs: list[ChannelSpec] = []
    for index, entry in enumerate(document["channels"]):
        where = f"channels[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be an object")
        ids: list[str] = []
        for name in ("project_id", "instance_id", "vpc_channel_id"):
            value = entry.get(name)
            error = check_id(name, value if isinstance(value, str) else None)
            if error is not None:
                raise ValueError(f"{where}: {error}")
            assert isinstance(value, str)
            ids.append(value)
        port = entry.get("port", DEFAULT_PORT)
        low, high = INT_RANGES["port"]
        if type(port) is not int or not low <= port <= high:
            raise ValueError(f"{where}: port must be an integer {low}..{high}, got {port!r}")
        max_members = entry.get("max_members")
        if max_members is not None and (type(max_members) is not int or max_members < 1):
            raise ValueError(f"{where}: max_members must be a positive integer")
        specs.append(ChannelSpec(ids[0], ids[1], ids[2], port, max_members))
    return tuple(specs)


def load_channels(path: Path) -> tuple[ChannelSpec, ...]:
    """Read a channel fixture file (see :func:`parse_channels`)."""
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    try:
        return parse_channels(document)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
