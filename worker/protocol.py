"""The members API as data: requests, and what each answer means. No sockets here.

Every exchange, whatever the operation, ends in one :class:`Verdict`: a :class:`Kind` (the
stable name of what happened) with the status, the API's error code and message, the
server's requested pause, its request id, and, for a documented success, the payload.
What a verdict means for the rows (retry, split, settle, stop) is not decided here but in
:mod:`worker.decisions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import msgspec
import orjson

from worker.config import Api
from worker.members import PAGE_LIMIT, Channel, canonical_address, check_id

# A server may ask for a pause (Retry-After); a run holding the cron lock must never wait
# longer than this for one, whatever it asks.
MAX_PAUSE: Final = 60.0


_PREFIX: Final = {Api.ROMA: "apic", Api.APIG: "apigw"}


class Op(StrEnum):
    """The member operations this tool performs."""

    POST = "post"  # add or update members
    LIST = "list"  # one page of a channel's members
    DELETE = "delete"  # remove one member


@dataclass(frozen=True, slots=True)
class Request:
    """One request, ready for any HTTP client: method, path, sorted query and body."""

    op: Op
    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def members_path(api: Api, channel: Channel) -> str:
    return (
        f"/v2/{channel.project_id}/{_PREFIX[api]}/instances/{channel.instance_id}"
        f"/vpc-channels/{channel.vpc_channel_id}/members"
    )


def encode_body(members: Iterable[bytes]) -> bytes:
    """Join pre-serialised MemberInfo objects into a request body without re-encoding them."""
    return b'{"members":[' + b",".join(members) + b"]}"


def post_request(api: Api, channel: Channel, body: bytes) -> Request:
    return Request(Op.POST, "POST", members_path(api, channel), (), body)


def list_request(api: Api, channel: Channel, offset: int) -> Request:
    # Sorted by key, as the signer's canonical query and the SDK's wire query are.
    query = (("limit", str(PAGE_LIMIT)), ("offset", str(offset)))
    return Request(Op.LIST, "GET", members_path(api, channel), query)


def delete_request(api: Api, channel: Channel, member_id: str) -> Request:
    return Request(Op.DELETE, "DELETE", f"{members_path(api, channel)}/{member_id}")


class Kind(StrEnum):
    """What an answer (or its absence) means, in the terms the decisions are taken in."""

    OK = "ok"  # the operation's documented success, with a well-formed body
    GONE = "gone"  # a DELETE of a member that is not there: what was wanted
    THROTTLED = "throttled"  # 429
    SERVER_ERROR = "server_error"  # 5xx or 408: the service may do better next time
    NO_ANSWER = "no_answer"  # sent, but no answer came (timeout, reset): may have applied
    UNREACHABLE = "unreachable"  # could not connect: nothing was sent
    MEMBERS_REFUSED = "members_refused"  # some members of the body are at fault (400, 413)
    QUOTA = "quota"  # the channel has no room for more members (403 APIG.3110)
    BAD_REQUEST = "bad_request"  # a final refusal of this request alone
    CHANNEL_REFUSED = "channel_refused"  # every request to this channel would be refused
    AUTH_REFUSED = "auth_refused"  # 401: the credentials were refused
    UNTRUSTED = "untrusted"  # the endpoint's TLS certificate failed verification
    UNEXPECTED = "unexpected"  # an answer this API never gives: the endpoint is wrong


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a channel's live members."""

    total: int
    members: list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The meaning of one exchange. ``status`` is None when no HTTP answer came;
    ``retry_after`` is the server's requested pause in seconds (not yet capped at
    :data:`MAX_PAUSE`); ``payload`` is the members (POST) or the :class:`Page` (LIST) of a
    documented success. ``refused_before`` says the exchange was the request sent again
    with renewed credentials, after the first sending was answered 401."""

    kind: Kind
    status: int | None = None
    code: str = ""
    msg: str = ""
    retry_after: float | None = None
    request_id: str = ""
    payload: object = None
    refused_before: bool = False

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def status_key(self) -> str:
        """How a request is counted: its HTTP status, or the local code when none came."""
        return str(self.status) if self.status is not None else self.code


_SUCCESS: Final = {Op.POST: 201, Op.LIST: 200, Op.DELETE: 204}
# 400 codes that judge the members themselves (a value, a type, a count), not the request.
_MEMBER_CODES: Final = frozenset({"APIG.2002", "APIG.2003", "APIG.2004", "APIG.2011", "APIG.2012"})
QUOTA_CODE: Final = "APIG.3110"
# A 404 on a DELETE names the missing thing: these codes say the instance or the channel
# is missing (the whole channel is refused); any other says the member is already gone.
_CHANNEL_MISSING: Final = frozenset({"APIG.3030", "APIG.3023"})
# An answer's text as a report keeps it: the API's message, or the start of another body.
_MESSAGE_CHARS: Final = 500
TEXT_CHARS: Final = 200
_TEXT_READ: Final = 64 * 1024


def classify(
    op: Op,
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    retry_after: str | None = None,
    request_id: str = "",
    scrub: Callable[[str], str] = str,
) -> Verdict:
    """Decide what an HTTP answer to ``op`` means. ``scrub`` takes the secrets out of a
    text the answer gives, whole, before it is cut to length (a secret cut in two could
    no longer be found)."""
    expected = _SUCCESS[op]
    if status == expected:
        return _success(op, status, body, content_type, request_id)
    if 200 <= status < 400:
        return _unexpected(status, f"HTTP {status} where the API answers {expected}", request_id)
    given, msg, body_request_id = _error_of(status, body, scrub)
    code = given or f"HTTP.{status}"
    request_id = request_id or body_request_id
    if status == 429:
        pause = parse_retry_after(retry_after)
        return Verdict(Kind.THROTTLED, status, code, msg, pause, request_id)
    if status >= 500 or status == 408:
        pause = parse_retry_after(retry_after)
        return Verdict(Kind.SERVER_ERROR, status, code, msg, pause, request_id)
    if status == 401:
        msg = f"the credentials were refused: {msg}"
        return Verdict(Kind.AUTH_REFUSED, status, code, msg, None, request_id)
    if given is None and status != 413:
        # Not the API's error body: a proxy or another server answered (the wrong endpoint,
        # a login page), which says nothing of the rows or the channel. A proxy's 413 says
        # the body was too big, as the API's does: smaller ones may pass.
        return _unexpected(status, f"HTTP {status} without the API's error body: {msg}", request_id)
    if status == 403 and code == QUOTA_CODE:
        return Verdict(Kind.QUOTA, status, code, msg, None, request_id)
    if status == 404 and op is Op.DELETE and code not in _CHANNEL_MISSING:
        return Verdict(Kind.GONE, status, code, msg, None, request_id)
    # A missing permission (403) or a missing instance/channel (404) refuses every request
    # to that channel alike; other channels may sit in projects the credentials can write to.
    if status in (403, 404):
        return Verdict(Kind.CHANNEL_REFUSED, status, code, msg, None, request_id)
    if op is Op.POST and (status == 413 or (status == 400 and code in _MEMBER_CODES)):
        return Verdict(Kind.MEMBERS_REFUSED, status, code, msg, None, request_id)
    return Verdict(Kind.BAD_REQUEST, status, code, msg, None, request_id)


def _success(op: Op, status: int, body: bytes, content_type: str, request_id: str) -> Verdict:
    if op is Op.DELETE:
        return Verdict(Kind.OK, status, request_id=request_id)
    if "json" not in content_type.lower():
        shown = content_type or "no content type"
        msg = f"HTTP {status} answered {shown}, not JSON (a proxy or a login page?)"
        return _unexpected(status, msg, request_id)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _unexpected(status, f"HTTP {status} whose body is not JSON", request_id)
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not all(_is_member(m) for m in members):
        return _unexpected(
            status, f"HTTP {status} whose body is not a members list with ids", request_id
        )
    if op is Op.LIST:
        total = data.get("total")
        if type(total) is not int or total < 0:
            return _unexpected(status, f"HTTP {status} whose body has no total", request_id)
        # A listed member's id becomes a segment of its DELETE's path, as the ids of an
        # inventory's channel do: by the same rule, nothing that could alter the path.
        if any(check_id("id", m["id"]) is not None for m in members):
            msg = f"HTTP {status} whose members list has an id that is not one"
            return _unexpected(status, msg, request_id)
        return Verdict(Kind.OK, status, request_id=request_id, payload=Page(total, members))
    return Verdict(Kind.OK, status, request_id=request_id, payload=members)


class Landed(msgspec.Struct, gc=False):
    """A member of a 201 answer, typed to the fields the worker reads."""

    id: str
    host: str | None = None
    ecs_id: str | None = None
    member_group_id: str | None = None
    create_time: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The member as :func:`classify` gives it, for :func:`match` (absent and null
        fields read alike there)."""
        return msgspec.structs.asdict(self)


class _LandedAnswer(msgspec.Struct, gc=False):
    members: list[Landed]


_LANDED: Final = msgspec.json.Decoder(_LandedAnswer)


def landed_answer(status: int, body: bytes, content_type: str, request_id: str) -> Verdict | None:
    """:func:`classify`'s verdict on a POST's answer, when it is a 201 that a typed decoder
    reads exactly (its members then :class:`Landed`, at half of orjson's cost); None for
    any other answer, which :func:`classify` decides.

    msgspec checks the syntax of the fields it skips but not all that orjson checks: bytes
    that are not UTF-8 (ruled out here: the answer must be ASCII) and numbers past a
    double's range (such as ``1e999``, which JSON allows and orjson refuses). An answer
    with such a number in a field the worker does not read is taken for the 201 it is."""
    if status != _SUCCESS[Op.POST] or "json" not in content_type.lower() or not body.isascii():
        return None
    try:
        members = _LANDED.decode(body).members
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not all(member.id for member in members):
        return None
    return Verdict(Kind.OK, status, request_id=request_id, payload=members)


def _is_member(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    member_id = value.get("id")
    return isinstance(member_id, str) and bool(member_id)


def _unexpected(status: int, msg: str, request_id: str) -> Verdict:
    return Verdict(Kind.UNEXPECTED, status, f"HTTP.{status}", msg, None, request_id)


def untrusted_endpoint(detail: str, *, wrong_host: bool = False) -> Verdict:
    """The endpoint's TLS certificate failed verification: no request can be sent safely,
    and sending again cannot help. ``wrong_host``: the certificate is for another name,
    which no CA bundle can mend."""
    hint = (
        "check that --endpoint names a host the certificate was issued for"
        if wrong_host
        else "pass --ca-bundle with the CA that issued it, if it is a private CA"
    )
    return Verdict(
        Kind.UNTRUSTED,
        None,
        "tls_certificate",
        f"the endpoint's TLS certificate was refused ({detail}); {hint}",
    )


def unreachable(detail: str) -> Verdict:
    """Nothing was sent: the connection could not be made."""
    return Verdict(Kind.UNREACHABLE, None, "connection_error", detail)


def no_answer(code: str, detail: str) -> Verdict:
    """The request went out but no answer came (timeout, reset): it may have applied."""
    return Verdict(Kind.NO_ANSWER, None, code, detail)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in delta-seconds form; None when absent or
    unusable. Not capped here: whoever waits caps it at :data:`MAX_PAUSE`, and says so."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    # float() also takes "nan", "inf" and "1e999".
    return seconds if 0 <= seconds < math.inf else None


def member_address(info: Mapping[str, object]) -> str | None:
    """The address of a member as the API reports it, in the form dedupe compares."""
    host, ecs_id = info.get("host"), info.get("ecs_id")
    return canonical_address(
        host if isinstance(host, str) else None, ecs_id if isinstance(ecs_id, str) else None
    )


def match(
    sent: Sequence[str], answered: Sequence[dict[str, object]]
) -> list[dict[str, object] | None]:
    """Pair each sent address with the answer's member for it, or None when the answer lacks it."""
    by_address: dict[str, dict[str, object]] = {}
    for info in answered:
        address = member_address(info)
        if address is not None:
            by_address.setdefault(address, info)
    return [by_address.get(address) for address in sent]


def _error_of(status: int, body: bytes, scrub: Callable[[str], str]) -> tuple[str | None, str, str]:
    """The API's error code (None when the body is not the API's error), message and
    request id; the message scrubbed, then cut."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error_code"), str):
        request_id = data.get("request_id")
        return (
            str(data["error_code"]),
            scrub(str(data.get("error_msg", "")))[:_MESSAGE_CHARS],
            request_id if isinstance(request_id, str) else "",
        )
    return None, body_text(body, scrub) or f"HTTP {status} without an error body", ""


def body_text(body: bytes, scrub: Callable[[str], str]) -> str:
    """The start of a body that is not the API's error, as a report keeps it: scrubbed,
    then cut (decoded far enough that a secret which begins in what is kept ends in what
    was scrubbed)."""
    return scrub(body[:_TEXT_READ].decode("utf-8", "replace")).strip()[:TEXT_CHARS]
