"""The IAM token service the emulator serves beside the API (``POST /v3/auth/tokens``).

Pure: time is the ``now`` argument (Unix seconds) and tokens come from the
``random.Random`` given, so a seeded run issues the same tokens. Passwords and tokens stay
out of every ``repr`` and error message.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

import orjson

MAX_LIVE_TOKENS: Final = 10_000
"""Tokens kept at once; beyond it the oldest is forgotten, so a flood of logins cannot
make the emulator grow (a forgotten token is refused like an expired one)."""

_TITLES: Final = {400: "Bad Request", 401: "Unauthorized"}


@dataclass(frozen=True, slots=True)
class IamUser:
    """An IAM user that may log in: ``domain`` is the account name."""

    domain: str
    name: str
    password: str = field(repr=False)


def parse_iam_user(text: str) -> IamUser:
    """Read ``DOMAIN/USER:PASSWORD``; the password may hold any character. Raises
    ValueError (without the password) when a part is missing."""
    domain, slash, rest = text.partition("/")
    name, colon, password = rest.partition(":")
    if not (slash and colon and domain and name and password):
        raise ValueError("an IAM user is DOMAIN/USER:PASSWORD")
    return IamUser(domain, name, password)


@dataclass(frozen=True, slots=True)
class IamError:
    """A refusal, answered with IAM's own body shape, not the gateway's."""

    status: int
    message: str

    def body(self) -> dict[str, object]:
        title = _TITLES[self.status]
        return {"error": {"code": self.status, "message": self.message, "title": title}}


@dataclass(frozen=True, slots=True)
class Issued:
    """A new token (sent in ``X-Subject-Token``) and the answer's body."""

    token: str = field(repr=False)
    body: dict[str, object]


class TokenState(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


class Tokens:
    """Issues tokens to the configured users and says whether a token is still good.

    Each token lives ``ttl`` seconds; asking for a new one does not revoke the old ones.
    """

    __slots__ = ("_expiry", "_refusing", "_rng", "_ttl", "_users")

    def __init__(self, users: Iterable[IamUser], ttl: float, rng: random.Random) -> None:
        self._users = {(user.domain, user.name): user for user in users}
        self._ttl = ttl
        self._rng = rng
        # Insertion order is expiry order, since every token lives the same time.
        self._expiry: dict[str, float] = {}
        self._refusing = False

    def issue(self, raw: bytes | bytearray, now: float) -> Issued | IamError:
        """Answer a password login body (``{"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"domain": {"name"}, "name", "password"}}}, "scope"?}}``)."""
        login = _login(raw)
        if login is None:
            return IamError(400, "The request body is invalid.")
        domain, name, password, project = login
        user = self._users.get((domain, name))
        if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            return IamError(401, "The username or password is wrong.")
        expiry = self._expiry
        while expiry:
            oldest, expires_at = next(iter(expiry.items()))
            if expires_at > now and len(expiry) < MAX_LIVE_TOKENS:
                break
            del expiry[oldest]
        token = "MII" + self._rng.randbytes(48).hex()
        expiry[token] = now + self._ttl
        details: dict[str, object] = {
            "methods": ["password"],
            "expires_at": _iso(now + self._ttl),
            "issued_at": _iso(now),
            "user": {"domain": {"name": domain}, "name": name},
        }
        if project:
            details["project"] = project
        return Issued(token, {"token": details})

    def revoke(self, *, lasting: bool = False) -> None:
        """Revoke every token issued so far, as an administrator may before they expire;
        with ``lasting``, the tokens issued from now on are refused too. Refused tokens
        are unknown ones. A hook for tests: the service offers no such call here."""
        self._expiry.clear()
        self._refusing = lasting

    def check(self, token: str, now: float) -> TokenState:
        expires_at = None if self._refusing else self._expiry.get(token)
        if expires_at is None:
            return TokenState.UNKNOWN
        return TokenState.VALID if now < expires_at else TokenState.EXPIRED


def _login(raw: bytes | bytearray) -> tuple[str, str, str, dict[str, str]] | None:
    """(domain, user, password, requested project) of a login body, or None if malformed."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    identity = _dig(document, "auth", "identity")
    methods = _dig(identity, "methods")
    user = _dig(identity, "password", "user")
    domain, name = _dig(user, "domain", "name"), _dig(user, "name")
    password = _dig(user, "password")
    if not (isinstance(methods, list) and "password" in methods):
        return None
    if not (isinstance(domain, str) and isinstance(name, str) and isinstance(password, str)):
        return None
    scope = _dig(document, "auth", "scope", "project")
    project: dict[str, str] = {}
    if isinstance(scope, dict):
        project = {k: v for k, v in scope.items() if k in ("id", "name") and isinstance(v, str)}
    return domain, name, password, project


def _dig(document: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _iso(seconds: float) -> str:
    """IAM's time format: ``2015-11-09T01:42:57.527363Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


LOCK_AFTER: Final = 5
LOCK_SECONDS: Final = 300.0


class KeyLocks:
    """The gateway's lock on an AK/SK pair: after more than LOCK_AFTER failures in a row
    (signatures refused for a key it knows), every request signed with the key is refused
    for LOCK_SECONDS, a good signature too (vendor-facts, section 1). A good signature
    outside a lock resets the count. Pure: ``now`` is Unix seconds."""

    __slots__ = ("_failures", "_until")

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def locked(self, access_key: str, now: float) -> bool:
        until = self._until.get(access_key)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[access_key]
        return False

    def failed(self, access_key: str, now: float) -> None:
        count = self._failures.get(access_key, 0) + 1
        if count > LOCK_AFTER:
            self._until[access_key] = now + LOCK_SECONDS
            count = 0
        self._failures[access_key] = count

    def passed(self, access_key: str) -> None:
        self._failures.pop(access_key, None)
