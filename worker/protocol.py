"""The members API as data: paths, bodies and what an answer means. No sockets here.

The HTTP client (:mod:`worker.api`) turns every exchange into one of three verdicts:
:class:`Landed` (201 with members), :class:`Retry` (worth sending again: 429, 5xx, timeouts,
resets, unreadable answers) or :class:`Refused` (final, with the scope it applies to).
Retrying is safe because the API is an upsert keyed by address.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from worker.members import Channel, canonical_address


class Api(StrEnum):
    """Which product's path prefix to use; the bodies are the same."""

    ROMA = "roma"
    APIG = "apig"


_PREFIX: Final = {Api.ROMA: "apic", Api.APIG: "apigw"}


def members_path(api: Api, channel: Channel) -> str:
    return (
        f"/v2/{channel.project_id}/{_PREFIX[api]}/instances/{channel.instance_id}"
        f"/vpc-channels/{channel.vpc_channel_id}/members"
    )


def encode_body(members: Iterable[bytes]) -> bytes:
    """Join pre-serialised MemberInfo objects into a request body without re-encoding them."""
    return b'{"members":[' + b",".join(members) + b"]}"


class Scope(StrEnum):
    """How far a final refusal reaches."""

    BATCH = "batch"
    CHANNEL = "channel"
    RUN = "run"


@dataclass(frozen=True, slots=True)
class Landed:
    members: list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class Retry:
    """Worth another attempt; ``retry_after`` is the server's requested pause in seconds."""

    status: int | None
    code: str
    msg: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Final for ``scope``. ``splittable`` means the refusal is about some members of the
    body, so smaller bodies may succeed. ``status`` is None when the client refused first
    (the endpoint's TLS certificate)."""

    status: int | None
    code: str
    msg: str
    scope: Scope
    splittable: bool = False


Verdict = Landed | Retry | Refused

# 400 codes that judge the members themselves (a value, a type, a count), not the request.
_MEMBER_CODES: Final = frozenset({"APIG.2002", "APIG.2003", "APIG.2004", "APIG.2011", "APIG.2012"})


def classify(status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """Decide what an HTTP answer means for the batch that was sent."""
    if status == 201:
        members = _members_of(body)
        if members is None:
            return Retry(status, "bad_answer", "201 answer without a readable members list")
        return Landed(members)
    code, msg = _error_of(status, body)
    if status == 429 or status >= 500 or status == 408:
        return Retry(status, code, msg, parse_retry_after(retry_after))
    if status == 401:
        return Refused(status, code, f"the token was refused: {msg}", Scope.RUN)
    # A missing permission (403) or a missing instance/channel (404) refuses every body sent
    # to that channel alike; other channels may sit in projects the token can write to.
    if status in (403, 404):
        return Refused(status, code, msg, Scope.CHANNEL)
    splittable = status == 413 or (status == 400 and code in _MEMBER_CODES)
    return Refused(status, code, msg, Scope.BATCH, splittable)


def status_key(verdict: Verdict) -> str:
    """How a request is counted: its HTTP status, or the local code when no answer came."""
    if isinstance(verdict, Landed):
        return "201"
    return str(verdict.status) if verdict.status is not None else verdict.code


def untrusted_endpoint(detail: str) -> Refused:
    """The endpoint's TLS certificate failed verification: no request can be sent safely,
    and sending again cannot help."""
    return Refused(
        None,
        "tls_certificate",
        f"the endpoint's TLS certificate was refused ({detail}); "
        "pass --ca-bundle with the CA that issued it",
        Scope.RUN,
    )


def stop_reason(verdict: Refused) -> str:
    """The stable name of a refusal that stops the run (``Scope.RUN``)."""
    return "certificate_refused" if verdict.status is None else "token_refused"


def transport_failure(code: str, detail: str) -> Retry:
    """A request that got no HTTP answer (timeout, reset): it may or may not have applied."""
    return Retry(None, code, detail)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in delta-seconds form; None when absent or unusable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    # float() also takes "inf" and "1e999"; a pause that never ends would hang the run.
    return seconds if 0 <= seconds < math.inf else None


def match(
    sent: Sequence[str], answered: Sequence[dict[str, object]]
) -> list[dict[str, object] | None]:
    """Pair each sent address with the answer's member for it, or None when the answer lacks it."""
    by_address: dict[str, dict[str, object]] = {}
    for info in answered:
        host, ecs_id = info.get("host"), info.get("ecs_id")
        address = canonical_address(
            host if isinstance(host, str) else None, ecs_id if isinstance(ecs_id, str) else None
        )
        if address is not None:
            by_address.setdefault(address, info)
    return [by_address.get(address) for address in sent]


def _members_of(body: bytes) -> list[dict[str, object]] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        return None
    return members


def _error_of(status: int, body: bytes) -> tuple[str, str]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error_code"), str):
        return str(data["error_code"]), str(data.get("error_msg", ""))
    text = body[:200].decode("utf-8", "replace").strip()
    return f"HTTP.{status}", text or f"HTTP {status} without an error body"
