"""Credentials: what authenticates a request, added when the request is released.

Every kind implements :class:`Credentials`: ``authorise`` adds its headers to a request at
the moment it is released to the wire (so a signature's date is never stale after a long
rate-limit wait); ``refresh`` is asked after a 401 whether fresh credentials may help;
``secrets`` lists every secret value it holds, so that no output of the run can show one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from yarl import URL

from worker.config import Config

# A header value we are willing to send: visible ASCII, no spaces, no line breaks. A secret
# that is not such a value was pasted wrongly, and would otherwise break the request (or
# split the header) with the secret in the error text.
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")


class CredentialError(ValueError):
    """Credentials that cannot be used; the message never holds the secret."""


def check_header_value(name: str, value: str) -> str:
    """``value`` when it can be sent as a header; CredentialError naming ``name`` otherwise."""
    if not _HEADER_SAFE.fullmatch(value):
        raise CredentialError(
            f"{name} holds characters a request header cannot carry "
            "(spaces, line breaks or non-ASCII): check how it was copied"
        )
    return value


class Credentials(Protocol):
    """How requests authenticate. ``kind`` is logged at start (never a value)."""

    kind: str

    @property
    def secrets(self) -> Sequence[str]: ...

    def authorise(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None: ...

    async def refresh(self) -> bool: ...


class Token:
    """A static ``X-Auth-Token`` (an IAM token obtained elsewhere)."""

    kind = "token"

    def __init__(self, token: str, origin: str = "the token") -> None:
        self._token = check_header_value(origin, token)

    def __repr__(self) -> str:
        return "Token(<secret>)"

    @property
    def secrets(self) -> Sequence[str]:
        return (self._token,)

    def authorise(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        headers["X-Auth-Token"] = self._token

    async def refresh(self) -> bool:
        return False


def resolve(config: Config, env: Mapping[str, str]) -> Credentials:
    """The one credential a run uses, from the first source that has one:

    1. ``--token-file PATH``, then ``VPC_MEMBERS_TOKEN``: a static X-Auth-Token.

    Raises CredentialError when there is none, or when sources conflict.
    """
    if config.token_file is not None:
        path = config.token_file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with open(fd, encoding="utf-8") as handle:
                token = handle.read(64 * 1024).strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CredentialError(f"--token-file {path}: {reason}") from None
        if not token:
            raise CredentialError(f"--token-file {path}: the file is empty")
        return Token(token, f"--token-file {path}")
    token = env.get("VPC_MEMBERS_TOKEN", "").strip()
    if token:
        return Token(token, "VPC_MEMBERS_TOKEN")
    raise CredentialError("no credentials: set VPC_MEMBERS_TOKEN (or pass --token-file PATH)")
