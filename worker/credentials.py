"""Credentials: what authenticates a request, added when the request is released.

Every kind implements :class:`Credentials`: ``authorise`` adds its headers to a request at
the moment it is released to the wire (so a signature's date is never stale after a long
rate-limit wait, and a token is renewed before it expires); ``refresh`` is asked after a
401, given the headers the refused request carried, whether a retry may help; ``secrets``
lists every secret value it holds, so that no output of the run can show one.
:func:`resolve` picks the one credential a run uses, from the environment and files, in
one documented order.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import orjson
import structlog
from yarl import URL

from worker import signing
from worker.config import Config
from worker.logs import SECRETS
from worker.protocol import TEXT_CHARS, body_text

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("vpc_members")

# A header value we are willing to send: visible ASCII, no spaces, no line breaks. A secret
# that is not such a value was pasted wrongly, and would otherwise break the request (or
# split the header) with the secret in the error text.
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")
# A token is renewed once this share of its lifetime has passed. Its lifetime is read on
# IAM's clock (expires_at less issued_at), not on ours: a clock far off IAM's must not
# make a token look expired on arrival, and every request log in anew. A token whose
# lifetime cannot be told so (no issued_at, or none after it) is renewed on a schedule no
# sooner than _RENEW_FLOOR after its login (a 401 still renews it at once).
_RENEW_AT: Final = 0.8
_RENEW_FLOOR: Final = timedelta(minutes=1)
# A clock this far off IAM's is worth a warning: AK/SK signatures and TLS certificates
# are judged on it too.
_SKEW_NOTED: Final = timedelta(minutes=5)
# A token IAM issued this recently that the API refuses is not fetched again: the API
# would refuse the next one for the same reason.
_FRESH: Final = timedelta(seconds=1)
_MAX_SECRET_FILE: Final = 64 * 1024


class CredentialError(ValueError):
    """Credentials that cannot be used; the message never holds the secret."""


class CredentialsRefused(Exception):
    """The identity service refused to issue credentials (its message, scrubbed)."""


def check_header_value(name: str, value: str) -> str:
    """``value`` when it can be sent as a header; CredentialError naming ``name`` otherwise."""
    if not _HEADER_SAFE.fullmatch(value):
        raise CredentialError(
            f"{name} holds characters a request header cannot carry "
            "(spaces, line breaks or non-ASCII): check how it was copied"
        )
    return value


class Credentials(Protocol):
    """How requests authenticate. ``kind`` is logged at start (never a value).
    ``locks_on_failures``: the service locks them after refusals in a row (an AK/SK pair,
    for 5 minutes after more than five), so refusals must be few."""

    kind: str
    locks_on_failures: bool

    @property
    def secrets(self) -> Sequence[str]: ...

    async def authorise(
        self, method: str, url: URL, headers: dict[str, str], body: bytes
    ) -> None: ...

    async def refresh(self, sent: Mapping[str, str]) -> bool:
        """After a 401 to a request that carried the headers ``sent``: whether sending it
        once more, with what :meth:`authorise` adds now, may be accepted."""
        ...


class Token:
    """A static ``X-Auth-Token`` (an IAM token obtained elsewhere)."""

    kind = "token"
    locks_on_failures = False

    def __init__(self, token: str, origin: str = "the token") -> None:
        self._token = check_header_value(origin, token)

    def __repr__(self) -> str:
        return "Token(<secret>)"

    @property
    def secrets(self) -> Sequence[str]:
        return (self._token,)

    async def authorise(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        headers["X-Auth-Token"] = self._token

    async def refresh(self, sent: Mapping[str, str]) -> bool:
        return False


class AkSk:
    """Access key signing (``SDK-HMAC-SHA256``), as the official SDK signs; with a
    ``security_token``, temporary credentials (sent, and signed, as ``X-Security-Token``)."""

    locks_on_failures = True

    def __init__(
        self, ak: str, sk: str, security_token: str | None = None, origin: str = ""
    ) -> None:
        self._ak = check_header_value(f"the access key{origin}", ak)
        self._sk = check_header_value(f"the secret key{origin}", sk)
        self._security_token = (
            check_header_value(f"the security token{origin}", security_token)
            if security_token
            else None
        )
        self.kind = "temporary_aksk" if self._security_token else "aksk"

    def __repr__(self) -> str:
        return f"AkSk({self._ak}, <secret>)"

    @property
    def secrets(self) -> Sequence[str]:
        return tuple(s for s in (self._sk, self._security_token) if s)

    async def authorise(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        # The SDK signs X-Project-Id; the project is the path's first segment after /v2.
        parts = url.raw_path.split("/")
        if len(parts) > 2 and parts[1] == "v2":
            headers["X-Project-Id"] = parts[2]
        if self._security_token:
            headers["X-Security-Token"] = self._security_token
        # The Host header as a URL writes it (an IPv6 literal bracketed), which is what
        # goes out: the signature covers it.
        host = url.host_port_subcomponent or ""
        headers.update(
            signing.sign(
                ak=self._ak,
                sk=self._sk,
                method=method,
                host=host,
                path=url.raw_path,
                query=list(url.query.items()),
                headers=headers,
                body=body,
                date=datetime.now(UTC),
            )
        )

    async def refresh(self, sent: Mapping[str, str]) -> bool:
        return False


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IamPassword:
    """An IAM user's password token: fetched at the first request, renewed before it
    expires, and renewed once more after a 401 (a token revoked early). ``clock`` gives
    the time (for tests)."""

    kind = "iam_password"
    # A wrong password is tried once (see _renew); a token refused is renewed, not retried.
    locks_on_failures = False

    def __init__(
        self,
        iam_endpoint: str,
        domain: str,
        user: str,
        password: str,
        *,
        project_name: str | None = None,
        project_id: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not (project_name or project_id):
            raise CredentialError(
                "an IAM token is scoped to a project: pass --region (or --project-id)"
            )
        self._url = URL(iam_endpoint.rstrip("/") + "/v3/auth/tokens")
        self._password = password
        scope = {"name": project_name} if project_name else {"id": project_id}
        self._body = orjson.dumps(
            {
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {
                            "user": {"domain": {"name": domain}, "name": user, "password": password}
                        },
                    },
                    "scope": {"project": scope},
                }
            }
        )
        self._token: str | None = None
        self._renew_after: datetime | None = None
        self._fetched: datetime | None = None
        self._refused: str | None = None
        self._lock = asyncio.Lock()
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        SECRETS.add([password])

    def __repr__(self) -> str:
        return f"IamPassword({self._url}, <secret>)"

    def open(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @property
    def secrets(self) -> Sequence[str]:
        return tuple(s for s in (self._password, self._token) if s)

    async def authorise(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        if self._due():
            async with self._lock:
                if self._due():  # not renewed by another request meanwhile
                    await self._renew()
        assert self._token is not None
        headers["X-Auth-Token"] = self._token

    async def refresh(self, sent: Mapping[str, str]) -> bool:
        """A token older than the current one was refused: the retry carries the current
        one, with no new login. The current one was refused: a new login, unless IAM
        issued it under :data:`_FRESH` ago."""
        async with self._lock:
            if sent.get("X-Auth-Token") != self._token:
                return True
            if self._fetched is not None and self._clock() - self._fetched < _FRESH:
                return False
            await self._renew()
            return True

    def _due(self) -> bool:
        return self._token is None or (
            self._renew_after is not None and self._clock() >= self._renew_after
        )

    async def _renew(self) -> None:
        """Log in for a new token; the caller holds the lock. A login that failed is not
        tried again: the requests that waited on it get its refusal, and the run stops,
        rather than knock on IAM once each (a wrong password, tried over and over, locks
        the account)."""
        if self._refused is not None:
            raise CredentialsRefused(self._refused)
        try:
            self._token, expires, issued = await self._fetch()
        except CredentialsRefused as exc:
            self._refused = str(exc)
            raise
        fetched = self._fetched = self._clock()
        SECRETS.add([self._token])
        if issued is not None and abs(fetched - issued) > _SKEW_NOTED:
            log.warning("clock_skew", iam_issued_at=issued.isoformat(), here=fetched.isoformat())
        self._renew_after = renewal(fetched, expires, issued)
        log.info(
            "iam_token_issued",
            expires_at=expires.isoformat(),
            renew_after=self._renew_after.isoformat(),
        )

    async def _fetch(self) -> tuple[str, datetime, datetime | None]:
        """A new token, when it expires, and when IAM says it issued it (if it says)."""
        from worker.client import MAX_ANSWER_BYTES, read_bounded, request_headers

        assert self._session is not None, "IamPassword is opened by the client"
        import aiohttp

        try:
            async with self._session.post(
                self._url,
                data=self._body,
                headers=request_headers(),
                allow_redirects=False,
            ) as response:
                payload = await read_bounded(response)
                token = response.headers.get("X-Subject-Token", "")
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CredentialsRefused(
                f"IAM at {self._url} could not be reached ({type(exc).__name__})"
            ) from None
        if payload is None:
            raise CredentialsRefused(
                f"IAM at {self._url} answered over {MAX_ANSWER_BYTES:,} bytes (HTTP {status})"
            )
        if status != 201 or not _HEADER_SAFE.fullmatch(token):
            raise CredentialsRefused(
                f"IAM at {self._url} refused the login (HTTP {status}: {_iam_message(payload)})"
            )
        try:
            details = orjson.loads(payload)["token"]
            expires = _instant(details["expires_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CredentialsRefused(f"IAM at {self._url} answered without an expires_at") from None
        try:
            issued: datetime | None = _instant(details["issued_at"])
        except (KeyError, TypeError, ValueError):
            issued = None
        return token, expires, issued


def renewal(fetched: datetime, expires: datetime, issued: datetime | None) -> datetime:
    """When a token fetched at ``fetched`` (our clock) is due for renewal, given when IAM
    says it expires and, if it says, when it issued it (IAM's clock)."""
    if issued is not None:
        lifetime = expires - issued
        return fetched + (lifetime * _RENEW_AT if lifetime > timedelta(0) else _RENEW_FLOOR)
    # No lifetime on IAM's clock: what is left on ours, which a skew may make nothing.
    return fetched + max((expires - fetched) * _RENEW_AT, _RENEW_FLOOR)


def _instant(text: object) -> datetime:
    """IAM's time (``2026-11-28T10:00:00.000000Z``); one without a zone is UTC."""
    if not isinstance(text, str):
        raise TypeError("not a time")
    found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _iam_message(payload: bytes) -> str:
    # Scrubbed whole, decoded, before it is cut: IAM may echo the login (the password in
    # it), and in JSON it may escape any character of it.
    try:
        error = orjson.loads(payload).get("error", {})
        return SECRETS.scrub(str(error.get("message", "")))[:TEXT_CHARS]
    except (orjson.JSONDecodeError, AttributeError):
        return body_text(payload, SECRETS.scrub)


def read_secret_file(path: Path, what: str) -> str:
    """A secret kept in a file (its text, without the whitespace around it), never through
    a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, encoding="utf-8") as handle:
            text = handle.read(_MAX_SECRET_FILE).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CredentialError(f"{what} {path}: {reason}") from None
    if not text:
        raise CredentialError(f"{what} {path}: the file is empty")
    return text


def _profile(env: Mapping[str, str]) -> tuple[Path, configparser.SectionProxy] | None:
    """The SDK's credentials file and its ``[basic]`` section, if there is one."""
    named = env.get("HUAWEICLOUD_SDK_CREDENTIALS_FILE", "").strip()
    path = (
        Path(named)
        if named
        else Path(env.get("HOME", "~")).expanduser() / ".huaweicloud" / "credentials"
    )
    if not path.is_file():
        if named:
            raise CredentialError(f"HUAWEICLOUD_SDK_CREDENTIALS_FILE {path}: no such file")
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_secret_file(path, "credentials file"))
    except configparser.Error as exc:
        raise CredentialError(
            f"credentials file {path}: not an INI file ({type(exc).__name__})"
        ) from None
    if "basic" not in parser:
        raise CredentialError(f"credentials file {path}: no [basic] section")
    if os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("credentials_file_readable", path=str(path), advice="chmod 600 it")
    return path, parser["basic"]


@dataclass(frozen=True, slots=True)
class Resolved:
    """The credential a run uses, where it came from, and the project id its source
    names (if any)."""

    credentials: Credentials
    source: str
    project_id: str | None = None


def resolve(config: Config, env: Mapping[str, str], iam_endpoint: str | None = None) -> Resolved:
    """The one credential a run uses. Set explicitly (a flag or the environment), exactly
    one of these may be given, else it is an error naming them:

    1. a static token: ``--token-file PATH`` or ``VPC_MEMBERS_TOKEN``;
    2. an IAM password token: ``VPC_MEMBERS_IAM_DOMAIN``, ``VPC_MEMBERS_IAM_USER`` and
       ``VPC_MEMBERS_IAM_PASSWORD`` (or ``--iam-password-file``);
    3. AK/SK signing: ``HUAWEICLOUD_SDK_AK`` and ``HUAWEICLOUD_SDK_SK`` (and
       ``HUAWEICLOUD_SDK_SECURITY_TOKEN`` for temporary credentials).

    With none of them, the SDK's credentials file (``HUAWEICLOUD_SDK_CREDENTIALS_FILE``,
    else ``~/.huaweicloud/credentials``, section ``[basic]``: ``ak``, ``sk``,
    ``security_token``, ``project_id``) is used. ``HUAWEICLOUD_SDK_PROJECT_ID`` (or the
    file's ``project_id``) fills a missing project id.
    """
    project_id = env.get("HUAWEICLOUD_SDK_PROJECT_ID", "").strip() or None
    token = env.get("VPC_MEMBERS_TOKEN", "").strip()
    user = env.get("VPC_MEMBERS_IAM_USER", "").strip()
    ak = env.get("HUAWEICLOUD_SDK_AK", "").strip()
    given = [
        name
        for name, present in (
            ("--token-file/VPC_MEMBERS_TOKEN", config.token_file is not None or token),
            ("VPC_MEMBERS_IAM_USER", user),
            ("HUAWEICLOUD_SDK_AK", ak),
        )
        if present
    ]
    if len(given) > 1:
        raise CredentialError(f"two kinds of credentials are set ({' and '.join(given)}); keep one")
    if config.token_file is not None:
        token = read_secret_file(config.token_file, "--token-file")
        return Resolved(
            Token(token, f"--token-file {config.token_file}"), "--token-file", project_id
        )
    if token:
        return Resolved(Token(token, "VPC_MEMBERS_TOKEN"), "VPC_MEMBERS_TOKEN", project_id)
    if user:
        return Resolved(
            _iam(config, env, user, project_id, iam_endpoint), "VPC_MEMBERS_IAM_*", project_id
        )
    if ak:
        sk = env.get("HUAWEICLOUD_SDK_SK", "").strip()
        if not sk:
            raise CredentialError("HUAWEICLOUD_SDK_AK is set but HUAWEICLOUD_SDK_SK is not")
        temporary = env.get("HUAWEICLOUD_SDK_SECURITY_TOKEN", "").strip() or None
        return Resolved(
            AkSk(ak, sk, temporary, " (HUAWEICLOUD_SDK_*)"), "HUAWEICLOUD_SDK_AK/SK", project_id
        )
    found = _profile(env)
    if found is not None:
        path, basic = found
        ak, sk = basic.get("ak", "").strip(), basic.get("sk", "").strip()
        if not (ak and sk):
            raise CredentialError(f"credentials file {path}: [basic] needs ak and sk")
        temporary = basic.get("security_token", "").strip() or None
        origin = f" (credentials file {path})"
        return Resolved(
            AkSk(ak, sk, temporary, origin),
            f"credentials file {path}",
            project_id or basic.get("project_id", "").strip() or None,
        )
    raise CredentialError(
        "no credentials: set VPC_MEMBERS_TOKEN (or --token-file), HUAWEICLOUD_SDK_AK and "
        "HUAWEICLOUD_SDK_SK, or VPC_MEMBERS_IAM_DOMAIN/_USER/_PASSWORD; see --help"
    )


def _iam(
    config: Config,
    env: Mapping[str, str],
    user: str,
    project_id: str | None,
    endpoint: str | None,
) -> IamPassword:
    """The IAM login of ``user`` (VPC_MEMBERS_IAM_USER, read already)."""
    domain = env.get("VPC_MEMBERS_IAM_DOMAIN", "").strip()
    if config.iam_password_file is not None:
        password = read_secret_file(config.iam_password_file, "--iam-password-file")
        if "\n" in password or "\r" in password:
            # Not sent as it is: a second line is a note or a second secret, never a
            # password's end.
            raise CredentialError(
                f"--iam-password-file {config.iam_password_file}: holds more than one line; "
                "a password is one line"
            )
    else:
        password = env.get("VPC_MEMBERS_IAM_PASSWORD", "")
    if not (domain and password):
        raise CredentialError(
            "an IAM login needs VPC_MEMBERS_IAM_DOMAIN, VPC_MEMBERS_IAM_USER and "
            "VPC_MEMBERS_IAM_PASSWORD (or --iam-password-file)"
        )
    if endpoint is None:
        raise CredentialError("an IAM login needs --iam-endpoint or --region")
    return IamPassword(
        endpoint,
        domain,
        user,
        password,
        project_name=config.region,
        project_id=None if config.region else (config.project_id or project_id),
    )
