"""AK/SK signing: the vendor's test vectors, the official SDK's own signer, and verify."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import signing
from worker.signing import Refusal, Refused, Verified

# --- the test vectors of vendor-facts.md section 1, verbatim ----------------------------------

AK = "AKEXAMPLE0000000000"
SK = "SKexample0000000000000000000000000000000"
HOST = "roma.cn-north-4.myhuaweicloud.com"
PROJECT = "0123456789abcdef0123456789abcdef"
PATH = f"/v2/{PROJECT}/apic/instances/inst-1/vpc-channels/ch-1/members"
DATE = datetime(2025, 1, 1, tzinfo=UTC)
SDK_HEADERS = {"User-Agent": "huaweicloud-usdk-python/3.0", "X-Project-Id": PROJECT}
POST_HEADERS = {"Content-Type": "application/json;charset=UTF-8", **SDK_HEADERS}
POST_BODY = (
    b'{"members": [{"host": "10.0.0.1", "port": 8080, "weight": 1, '
    b'"member_group_name": "default"}]}'
)
POST_CANONICAL = f"""POST
{PATH}/

content-type:application/json;charset=UTF-8
host:{HOST}
user-agent:huaweicloud-usdk-python/3.0
x-project-id:{PROJECT}
x-sdk-date:20250101T000000Z

content-type;host;user-agent;x-project-id;x-sdk-date
70c98f1446944545cdcf89cea69ab4a1c77eedc3a02814e7793c0cdfd709b1a5"""
GET_QUERY = [("offset", "0"), ("limit", "500"), ("name", "a b:c")]
GET_HEADERS = {"Content-Type": "application/json", **SDK_HEADERS}


def test_vector_post_members() -> None:
    signed = {**POST_HEADERS, "Host": HOST, "X-Sdk-Date": "20250101T000000Z"}
    canonical = signing.canonical_request(
        method="POST", path=PATH, query=[], headers=signed, body=POST_BODY
    )
    assert canonical == POST_CANONICAL
    assert signing.string_to_sign(canonical, "20250101T000000Z") == (
        "SDK-HMAC-SHA256\n20250101T000000Z\n"
        "df56e5d9b62d0fd79c5c3c3433bea1dc65b0063a2a8388415570c246474ff3bd"
    )
    added = signing.sign(
        ak=AK, sk=SK, method="POST", host=HOST, path=PATH, query=[],
        headers=POST_HEADERS, body=POST_BODY, date=DATE,
    )  # fmt: skip
    assert added == {
        "X-Sdk-Date": "20250101T000000Z",
        "Host": HOST,
        "Authorization": (
            "SDK-HMAC-SHA256 Access=AKEXAMPLE0000000000, "
            "SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, "
            "Signature=75adb52163d087704f32d9cd4b20af49e953b34a8604d7b448d0b3b5676b8bd9"
        ),
    }


def test_vector_get_members_with_a_query() -> None:
    assert signing.canonical_query(GET_QUERY) == "limit=500&name=a%20b%3Ac&offset=0"
    assert signing.request_target(PATH, GET_QUERY) == f"{PATH}?limit=500&name=a%20b%3Ac&offset=0"
    added = signing.sign(
        ak=AK, sk=SK, method="GET", host=HOST, path=PATH, query=GET_QUERY,
        headers=GET_HEADERS, body=b"", date=DATE,
    )  # fmt: skip
    assert added["Authorization"].endswith(
        "Signature=ca9a1e83ff59cc7bb8fb226fab2bf755763d9bf6763275c3028566e985eb8a7f"
    )


# --- the official SDK's signer, on generated requests ------------------------------------------

# Paths with spaces, percent signs, colons, unicode, empty and dot segments.
segments = st.text(max_size=8) | st.sampled_from(["", ".", "..", "%2F", "%41", "a b", "é", "~x"])
paths = st.lists(segments, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
# A path as it can go on the wire: each segment percent-encoded (a literal ? or # ends it).
wire_paths = st.lists(segments, min_size=1, max_size=5).map(
    lambda parts: "/" + "/".join(quote(part, safe="") for part in parts)
)
query_text = st.text(max_size=10) | st.sampled_from(["", "a b:c", "x+y", "k=v&w", "名字", "%20"])
queries = st.lists(st.tuples(query_text, query_text), max_size=5)
RESERVED = {"host", "authorization", "x-sdk-date", "content-type", "x-sdk-content-sha256"}
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,14}", fullmatch=True).filter(
    lambda name: name.lower() not in RESERVED
)
header_values = st.text(max_size=20).filter(lambda v: "\n" not in v and "\r" not in v)
content_types = st.sampled_from(
    [None, "application/json", "application/json;charset=UTF-8", "text/plain", "application/xml"]
)
LARGE_BODY = bytes(range(256)) * 4096  # 1 MiB
bodies = st.binary(max_size=512) | st.just(b"") | st.just(LARGE_BODY)
# X-Sdk-Date holds whole seconds.
dates = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda moment: moment.replace(microsecond=0)
)
# A marker no generated header or query holds, so a refusal that echoed the SK would show.
SK_MARKER = "sk-secret:"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    date: datetime
    ak: str
    sk: str


@st.composite
def requests(draw: st.DrawFn, paths: st.SearchStrategy[str] = wire_paths) -> Request:
    names = draw(st.lists(header_names, max_size=5, unique_by=str.lower))
    headers = {name: draw(header_values) for name in names}
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Host"] = draw(st.sampled_from(["127.0.0.1:8443", "apig.example.com", "[::1]:80"]))
    return Request(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "patch"])),
        path=draw(paths),
        query=draw(queries),
        headers=headers,
        body=draw(bodies),
        date=draw(dates),
        ak=draw(st.from_regex(r"[A-Z0-9]{1,20}", fullmatch=True)),
        sk=SK_MARKER + draw(st.text(max_size=30)),
    )


def sign(request: Request, **changes: object) -> dict[str, str]:
    fields = {
        "ak": request.ak, "sk": request.sk, "method": request.method, "host": "roma.example.com",
        "path": request.path, "query": request.query, "headers": request.headers,
        "body": request.body, "date": request.date, **changes,
    }  # fmt: skip
    return signing.sign(**fields)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(requests(paths))
def test_sign_matches_the_official_sdk(request: Request) -> None:
    stamp = request.date.strftime("%Y%m%dT%H%M%SZ")
    theirs = SdkRequest(
        method=request.method,
        schema="https",
        host="roma.example.com",
        resource_path=request.path,
        query_params=list(request.query),
        header_params={**request.headers, "X-Sdk-Date": stamp},
        body=request.body,
    )
    Signer(BasicCredentials(request.ak, request.sk)).sign(theirs)
    ours = sign(request)
    assert ours["Authorization"] == theirs.header_params["Authorization"]
    assert ours["X-Sdk-Date"] == stamp
    assert ours.get("Host") == (None if "Host" in request.headers else "roma.example.com")
    assert ours.get("X-Sdk-Content-Sha256") == theirs.header_params.get("X-Sdk-Content-Sha256")
    # The SDK puts the sorted, encoded query on the wire; request_target says the same.
    assert signing.request_target(request.path, request.query) == theirs.uri


# --- verify -------------------------------------------------------------------------------------

KEYS = {AK: SK}


def received(request: Request, added: dict[str, str]) -> dict[str, object]:
    """What a server sees of a request sent as signed: the raw path, the wire query parsed
    back into pairs, every header."""
    target = signing.request_target(request.path, request.query)
    path, _, raw_query = target.partition("?")
    return {
        "method": request.method.upper(),
        "path": path,
        "query": signing.parse_query(raw_query),
        "headers": {**request.headers, **added},
        "body": request.body,
    }


def check(request: Request, added: dict[str, str], **changes: object) -> Verified | Refused:
    arguments = {"keys": {request.ak: request.sk}, "now": request.date}
    arguments |= received(request, added) | changes
    return signing.verify(**arguments)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(requests())
def test_verify_accepts_what_sign_produced(request: Request) -> None:
    outcome = check(request, sign(request))
    assert outcome == Verified(request.ak, request.date.replace(tzinfo=UTC))


@settings(max_examples=200, deadline=None)
@given(requests(), st.text(min_size=1, max_size=4))
def test_verify_refuses_any_other_sk(request: Request, extra: str) -> None:
    outcome = check(request, sign(request, sk=request.sk + extra))
    assert isinstance(outcome, Refused) and outcome.reason is Refusal.MISMATCH
    assert SK_MARKER not in outcome.detail


@settings(max_examples=200, deadline=None)
@given(requests(), st.binary(min_size=1, max_size=64))
def test_verify_refuses_a_changed_body(request: Request, other: bytes) -> None:
    # Without X-Sdk-Content-Sha256 the body is signed; with UNSIGNED-PAYLOAD it is not.
    headers = {**request.headers, "Content-Type": "application/json"}
    request = Request(**{**request.__dict__, "headers": headers, "body": request.body or b"{}"})
    outcome = check(request, sign(request), body=request.body + other)
    assert isinstance(outcome, Refused) and outcome.reason is Refusal.MISMATCH


@settings(max_examples=200, deadline=None)
@given(requests(), st.tuples(query_text, query_text))
def test_verify_refuses_a_changed_query(request: Request, pair: tuple[str, str]) -> None:
    added = sign(request)
    outcome = check(request, added, query=[*received(request, added)["query"], pair])  # type: ignore[misc]
    assert isinstance(outcome, Refused) and outcome.reason is Refusal.MISMATCH


@given(requests(), st.integers(-10_000, 10_000))
def test_verify_refuses_a_date_more_than_15_minutes_away(request: Request, seconds: int) -> None:
    now = request.date + timedelta(seconds=seconds)
    outcome = check(request, sign(request), now=now)
    if abs(seconds) <= 15 * 60:
        assert isinstance(outcome, Verified)
    else:
        assert isinstance(outcome, Refused) and outcome.reason is Refusal.EXPIRED
        assert outcome.detail == (
            f"signature expired, signature time:{request.date:%Y%m%dT%H%M%SZ},"
            f"server time:{now:%Y%m%dT%H%M%SZ}"
        )


def post_request(**changes: object) -> Request:
    fields: dict[str, object] = {
        "method": "POST", "path": PATH, "query": [], "headers": dict(POST_HEADERS),
        "body": POST_BODY, "date": DATE, "ak": AK, "sk": SK, **changes,
    }  # fmt: skip
    return Request(**fields)  # type: ignore[arg-type]


def test_an_unknown_ak_is_refused_by_name() -> None:
    request = post_request()
    outcome = check(request, sign(request), keys={"OTHER": SK})
    assert outcome == Refused(Refusal.UNKNOWN_KEY, f"ak {AK} not exist")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer abc",
        "SDK-HMAC-SHA256 Access=AKEXAMPLE0000000000, SignedHeaders=host;x-sdk-date",
        "SDK-HMAC-SHA256 Access=, SignedHeaders=host, Signature=00",
        "SDK-HMAC-SHA256",
    ],
)
def test_a_malformed_authorization_is_refused(authorization: str | None) -> None:
    request = post_request()
    added = sign(request)
    del added["Authorization"]
    if authorization is not None:
        added["Authorization"] = authorization
    outcome = check(request, added)
    assert isinstance(outcome, Refused) and outcome.reason is Refusal.MALFORMED


@pytest.mark.parametrize("date", [None, "2025-01-01T00:00:00Z", ""])
def test_a_missing_or_garbled_date_is_refused(date: str | None) -> None:
    request = post_request()
    added = sign(request)
    del added["X-Sdk-Date"]
    if date is not None:
        added["X-Sdk-Date"] = date
    outcome = check(request, added, headers={**request.headers, **added})
    assert outcome == Refused(Refusal.MALFORMED, "X-Sdk-Date is not %Y%m%dT%H%M%SZ", AK)


def test_a_signed_header_the_request_lacks_is_refused() -> None:
    request = post_request()
    added = sign(request)
    headers = {k: v for k, v in {**request.headers, **added}.items() if k != "User-Agent"}
    outcome = check(request, {}, headers=headers)
    assert outcome == Refused(
        Refusal.MALFORMED, "signed header user-agent is not in the request", AK
    )


def test_a_security_token_must_be_signed_and_is_never_echoed() -> None:
    token = "temporary-security-token-value"
    request = post_request()
    unsigned = check(request, sign(request), headers={
        **request.headers, **sign(request), "X-Security-Token": token,
    })  # fmt: skip
    assert unsigned == Refused(Refusal.UNSIGNED, "header x-security-token must be signed", AK)

    with_token = post_request(headers={**POST_HEADERS, "X-Security-Token": token})
    assert isinstance(check(with_token, sign(with_token)), Verified)
    refused = check(with_token, sign(with_token, sk="wrong"))
    assert isinstance(refused, Refused) and refused.reason is Refusal.MISMATCH
    assert token not in refused.detail and "x-security-token:***" in refused.detail
    assert refused.detail.startswith(f"canonicalRequest:POST|{PATH}/||content-type:")


def test_a_stated_content_hash_must_be_the_bodys() -> None:
    request = post_request(headers={**POST_HEADERS, "X-Sdk-Content-Sha256": "0" * 64})
    outcome = check(request, sign(request))
    assert outcome == Refused(Refusal.MISMATCH, "X-Sdk-Content-Sha256 is not the body's hash", AK)


def test_unsigned_payload_leaves_the_body_out_as_the_sdk_does() -> None:
    request = post_request(headers={**POST_HEADERS, "Content-Type": "text/plain"})
    added = sign(request)
    assert added["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert isinstance(check(request, added, body=b"anything else"), Verified)


@pytest.mark.parametrize(
    "headers",
    [{"A": "1", "a": "2"}, {"Authorization": "x"}, {"x-sdk-date": "20250101T000000Z"}],
)
def test_sign_refuses_headers_it_cannot_sign_unambiguously(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        sign(post_request(), headers=headers)


def test_names_with_underscores_are_sent_but_not_signed() -> None:
    request = post_request(headers={**POST_HEADERS, "X_Trace": "1"})
    added = sign(request)
    assert "x_trace" not in added["Authorization"]
    assert isinstance(check(request, added, headers={**request.headers, **added, "X_Trace": "2"}),
                      Verified)  # fmt: skip
