"""AK/SK request signing (``SDK-HMAC-SHA256``) as the vendor's official Python SDK signs,
and its verification, for a server.

Pure: no I/O and no clock (dates are arguments). A refused signature is a value
(:class:`Refused`), never an exception, and no SK ever appears in a result.

How a client uses it: ``sign(...)`` returns the headers to add to the request (``X-Sdk-Date``,
``Authorization``, ``Host`` when the request has none, and ``X-Sdk-Content-Sha256:
UNSIGNED-PAYLOAD`` for a body that is neither JSON nor BSON, as the SDK does). The request
must then go out exactly as signed: the path as given (``canonical_uri`` appends ``/`` for
the signature only), the query as :func:`request_target` spells it (sorted and encoded, as
the SDK sends it), the same header values and the same body bytes.

Where the SDK is quirky, this module follows it: names containing ``_`` are left out of
the signed headers; a header value is trimmed with :meth:`str.strip`; an empty body always
hashes as the empty string. Two deliberate differences, both about input the SDK cannot
sign sensibly: header names that differ only in case are refused (the SDK would sign the
name twice), and the ``Content-Type`` and ``X-Sdk-Content-Sha256`` headers are found
whatever their case (the SDK looks for ``Content-Type`` spelled exactly so).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import quote, unquote

ALGORITHM: Final = "SDK-HMAC-SHA256"
DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
DATE_HEADER: Final = "X-Sdk-Date"
CONTENT_HASH_HEADER: Final = "X-Sdk-Content-Sha256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
EMPTY_BODY_HASH: Final = hashlib.sha256(b"").hexdigest()
MAX_SKEW: Final = timedelta(minutes=15)
"""How far ``X-Sdk-Date`` may be from the server's clock, either way."""

Query = Sequence[tuple[str, str]]
"""Query parameters as (key, value) pairs, repeats allowed, in any order."""
Body = bytes | bytearray

# Headers that change what a signature vouches for: a request carrying one that is not
# signed could have had it added or altered on the way.
_MUST_BE_SIGNED: Final = ("host", "x-sdk-date", "x-security-token", "x-sdk-content-sha256")
# Values a refusal must not echo back: a client may well log the answer.
_SECRET_HEADERS: Final = frozenset({"x-security-token", "x-auth-token"})
# A header value from a server's parser may carry undecodable bytes as lone surrogates;
# this turns them back into the bytes that came, so verifying never raises.
_BYTES: Final = "surrogateescape"


def encode(text: str) -> str:
    """Percent-encode all but ``A-Za-z0-9_.-~`` (UTF-8, upper-case hex), as the SDK does."""
    return quote(text, safe="~", errors=_BYTES)


def canonical_uri(path: str) -> str:
    """The path as signed: decoded, each segment re-encoded, and ending in ``/``."""
    uri = "/".join(encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query: Query) -> str:
    """The pairs sorted by key then value, encoded, ``k=v`` joined with ``&``."""
    return "&".join(f"{encode(key)}={encode(value)}" for key, value in sorted(query))


def request_target(path: str, query: Query) -> str:
    """The request line's target as the SDK sends it: the path, then the canonical query."""
    text = canonical_query(query)
    return f"{path}?{text}" if text else path


def parse_query(raw: str) -> list[tuple[str, str]]:
    """The pairs of a query string as received: split on ``&`` and on the first ``=``,
    each side percent-decoded. ``+`` stays ``+``: the SDK encodes a space as ``%20``."""
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Every header name without ``_``, lower-cased and sorted."""
    return sorted(name.lower() for name in headers if "_" not in name)


def canonical_headers(headers: Mapping[str, str], names: Sequence[str]) -> str:
    """``name:value`` for each signed name, values trimmed, each line ending in ``\\n``.

    Names are looked up whatever their case; every name must be present in ``headers``.
    """
    values = {name.lower(): value.strip() for name, value in headers.items()}
    return "\n".join(f"{name}:{values[name.lower()]}" for name in names) + "\n"


def payload_hash(body: Body, headers: Mapping[str, str]) -> str:
    """Hex SHA-256 of the body; an ``X-Sdk-Content-Sha256`` value stands in for it when
    present (``UNSIGNED-PAYLOAD``), except that an empty body is always the empty hash."""
    if not body:
        return EMPTY_BODY_HASH
    return _get(headers, CONTENT_HASH_HEADER) or hashlib.sha256(body).hexdigest()


def canonical_request(
    *,
    method: str,
    path: str,
    query: Query,
    headers: Mapping[str, str],
    body: Body,
    signed_headers: Sequence[str] | None = None,
) -> str:
    """The six parts joined with ``\\n``: method, URI, query, headers, signed names, payload.

    ``signed_headers`` defaults to :func:`signed_header_names` of ``headers``.
    """
    names = signed_header_names(headers) if signed_headers is None else signed_headers
    return "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers(headers, names),
            ";".join(names),
            payload_hash(body, headers),
        )
    )


def string_to_sign(canonical: str, date: str) -> str:
    """``SDK-HMAC-SHA256``, the ``X-Sdk-Date`` value and the canonical request's hex SHA-256."""
    digest = hashlib.sha256(canonical.encode(errors=_BYTES)).hexdigest()
    return f"{ALGORITHM}\n{date}\n{digest}"


def signature(sk: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed by the raw SK (no key derivation)."""
    return hmac.new(sk.encode(), to_sign.encode(errors=_BYTES), hashlib.sha256).hexdigest()


def format_date(moment: datetime) -> str:
    """``X-Sdk-Date`` for a moment (naive means UTC)."""
    return _utc(moment).strftime(DATE_FORMAT)


def parse_date(text: str | None) -> datetime | None:
    """The UTC moment of an ``X-Sdk-Date`` value, or None when it is not one."""
    if text is None:
        return None
    try:
        return datetime.strptime(text.strip(), DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def sign(
    *,
    ak: str,
    sk: str,
    method: str,
    host: str,
    path: str,
    query: Query,
    headers: Mapping[str, str],
    body: Body,
    date: datetime,
) -> dict[str, str]:
    """The headers to add so that the request is signed, ``Authorization`` last.

    ``path`` is the path as it goes on the wire, each segment already percent-encoded
    (a literal ``?`` or ``#`` would end it); send ``request_target(path, query)``, not a
    query of your own spelling. ``host`` is the endpoint's ``host[:port]`` exactly as the
    ``Host`` header will carry it; it is signed (and returned) only when ``headers`` has no
    ``Host``. ``headers`` are every other header the request will send and sign:
    ``Content-Type``, ``User-Agent``, ``X-Project-Id``, ``X-Security-Token`` with temporary
    credentials. Raises ValueError when ``headers`` already hold ``Authorization`` or
    ``X-Sdk-Date``, or two names that differ only in case.
    """
    lowered = {name.lower() for name in headers}
    if len(lowered) != len(headers):
        raise ValueError("two header names differ only in case")
    if lowered & {"authorization", "x-sdk-date"}:
        raise ValueError("the headers to sign already hold Authorization or X-Sdk-Date")
    added: dict[str, str] = {}
    content_type = _get(headers, "Content-Type")
    if (
        content_type
        and not content_type.startswith(("application/json", "application/bson"))
        and "x-sdk-content-sha256" not in lowered
    ):
        added[CONTENT_HASH_HEADER] = UNSIGNED_PAYLOAD
    stamp = added[DATE_HEADER] = format_date(date)
    if "host" not in lowered:
        added["Host"] = host
    signed = {**headers, **added}
    names = signed_header_names(signed)
    canonical = canonical_request(
        method=method, path=path, query=query, headers=signed, body=body, signed_headers=names
    )
    digest = signature(sk, string_to_sign(canonical, stamp))
    added["Authorization"] = (
        f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(names)}, Signature={digest}"
    )
    return added


class Refusal(StrEnum):
    """Why a signature was refused."""

    MALFORMED = "malformed"
    """No ``SDK-HMAC-SHA256`` Authorization, no valid ``X-Sdk-Date``, or a signed header
    that the request does not carry."""
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    """``X-Sdk-Date`` is more than the allowed skew away from the server's clock."""
    UNSIGNED = "unsigned"
    """The request carries Host, X-Sdk-Date, X-Security-Token or X-Sdk-Content-Sha256
    without signing it."""
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class Verified:
    """A good signature: whose key made it, and when it says it was made."""

    access_key: str
    date: datetime


@dataclass(frozen=True, slots=True)
class Refused:
    """A refused signature. ``detail`` is written as the service words it (``ak X not
    exist``, ``signature expired, signature time:...,server time:...``,
    ``canonicalRequest:...`` with ``|`` for newlines); it holds no SK and no token."""

    reason: Refusal
    detail: str
    access_key: str | None = None  # a key the keys hold, when the refusal is of its use


def verify(
    *,
    method: str,
    path: str,
    query: Query,
    headers: Mapping[str, str],
    body: Body,
    keys: Mapping[str, str],
    now: datetime,
    max_skew: timedelta = MAX_SKEW,
) -> Verified | Refused:
    """Check the ``Authorization`` of a request as received.

    ``path`` is the raw (still percent-encoded) path without the query, ``query`` the
    received pairs (:func:`parse_query`), ``headers`` every received header, ``keys`` the
    SK of each known AK, ``now`` the server's clock (naive means UTC). Checks, in order:
    the header's form, the AK, the date (at most ``max_skew`` away), that the signed
    headers are present and include those that must be signed, then the signature itself
    (compared in constant time).
    """
    values = {name.lower(): value for name, value in headers.items()}
    parsed = _parse_authorization(values.get("authorization"))
    if parsed is None:
        return Refused(Refusal.MALFORMED, f"the Authorization header is not {ALGORITHM}")
    ak, names, claimed = parsed
    sk = keys.get(ak)
    if sk is None:
        return Refused(Refusal.UNKNOWN_KEY, f"ak {ak} not exist")
    date = parse_date(values.get("x-sdk-date"))
    if date is None:
        return Refused(Refusal.MALFORMED, f"{DATE_HEADER} is not {DATE_FORMAT}", ak)
    server_time = _utc(now)
    if abs(server_time - date) > max_skew:
        return Refused(
            Refusal.EXPIRED,
            f"signature expired, signature time:{format_date(date)},"
            f"server time:{format_date(server_time)}",
            ak,
        )
    absent = [name for name in names if name.lower() not in values]
    if absent:
        return Refused(Refusal.MALFORMED, f"signed header {absent[0]} is not in the request", ak)
    signed = {name.lower() for name in names}
    unsigned = [name for name in _MUST_BE_SIGNED if name in values and name not in signed]
    if unsigned:
        return Refused(Refusal.UNSIGNED, f"header {unsigned[0]} must be signed", ak)
    stated = values.get("x-sdk-content-sha256")
    if body and stated and stated not in (UNSIGNED_PAYLOAD, hashlib.sha256(body).hexdigest()):
        return Refused(Refusal.MISMATCH, "X-Sdk-Content-Sha256 is not the body's hash", ak)

    def canonical(shown: Mapping[str, str]) -> str:
        return canonical_request(
            method=method, path=path, query=query, headers=shown, body=body, signed_headers=names
        )

    expected = signature(sk, string_to_sign(canonical(values), format_date(date)))
    if hmac.compare_digest(expected.encode(), claimed.encode(errors=_BYTES)):
        return Verified(ak, date)
    masked = {**values, **{name: "***" for name in _SECRET_HEADERS if name in values}}
    return Refused(Refusal.MISMATCH, "canonicalRequest:" + canonical(masked).replace("\n", "|"), ak)


def _parse_authorization(value: str | None) -> tuple[str, list[str], str] | None:
    """(AK, signed header names, signature) of ``SDK-HMAC-SHA256 Access=..,
    SignedHeaders=..;.., Signature=..``, or None when it is not of that form."""
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
    ak, names, claimed = (fields.get(k) for k in ("Access", "SignedHeaders", "Signature"))
    if not (ak and names and claimed):
        return None
    return ak, names.split(";"), claimed


def _get(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
