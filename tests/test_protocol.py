"""What each answer of the members API means for the batch that was sent."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.members import Channel
from worker.protocol import (
    Api,
    Landed,
    Refused,
    Retry,
    Scope,
    classify,
    encode_body,
    match,
    members_path,
    parse_retry_after,
    status_key,
    transport_failure,
)

CHANNEL = Channel("proj", "inst", "chan")


def _error(code: str, msg: str = "message") -> bytes:
    return orjson.dumps({"error_code": code, "error_msg": msg})


@pytest.mark.parametrize(
    ("api", "path"),
    [
        (Api.ROMA, "/v2/proj/apic/instances/inst/vpc-channels/chan/members"),
        (Api.APIG, "/v2/proj/apigw/instances/inst/vpc-channels/chan/members"),
    ],
)
def test_members_path(api: Api, path: str) -> None:
    assert members_path(api, CHANNEL) == path


@given(st.lists(st.dictionaries(st.text(), st.integers(0, 65535) | st.text()), max_size=5))
def test_encode_body_is_the_json_of_the_members(members: list[dict[str, object]]) -> None:
    body = encode_body(orjson.dumps(m) for m in members)
    assert orjson.loads(body) == {"members": members}


def test_201_with_members_lands() -> None:
    members = [{"host": "10.0.0.1", "id": "a" * 32}]
    verdict = classify(201, orjson.dumps({"total": 1, "size": 1, "members": members}))
    assert verdict == Landed(members)
    assert status_key(verdict) == "201"


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"members": 3}', b'{"members": [1]}', b'{"size": 0}']
)
def test_unreadable_201_is_worth_retrying(body: bytes) -> None:
    verdict = classify(201, body)
    assert isinstance(verdict, Retry)
    assert (verdict.status, verdict.code) == (201, "bad_answer")


@pytest.mark.parametrize(
    ("status", "code", "scope", "splittable"),
    [
        (400, "APIG.2000", Scope.BATCH, False),
        (400, "APIG.2001", Scope.BATCH, False),
        (400, "APIG.2002", Scope.BATCH, True),
        (400, "APIG.2003", Scope.BATCH, True),
        (400, "APIG.2004", Scope.BATCH, True),
        (400, "APIG.2011", Scope.BATCH, True),
        (400, "APIG.2012", Scope.BATCH, True),
        (400, "APIG.9876", Scope.BATCH, False),
        (413, "APIG.2003", Scope.BATCH, True),
        (401, "APIG.1002", Scope.RUN, False),
        (403, "APIG.1005", Scope.CHANNEL, False),
        (404, "APIG.3030", Scope.CHANNEL, False),
        (404, "APIG.3023", Scope.CHANNEL, False),
        (409, "APIG.3999", Scope.BATCH, False),
    ],
)
def test_refusals(status: int, code: str, scope: Scope, splittable: bool) -> None:
    verdict = classify(status, _error(code, "why"), retry_after="3")
    assert isinstance(verdict, Refused)
    assert (verdict.status, verdict.code, verdict.scope) == (status, code, scope)
    assert verdict.splittable is splittable
    assert "why" in verdict.msg
    assert status_key(verdict) == str(status)


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (413, b"<html>Request Entity Too Large</html>", "HTTP.413"),
        (401, b"", "HTTP.401"),
        (400, b'{"error_code": 2004}', "HTTP.400"),
    ],
)
def test_refusals_without_an_apig_body_use_the_status(status: int, body: bytes, code: str) -> None:
    verdict = classify(status, body)
    assert isinstance(verdict, Refused)
    assert verdict.code == code
    assert verdict.msg


@pytest.mark.parametrize(
    ("status", "body", "header", "code", "after"),
    [
        (429, _error("APIG.0308"), "2", "APIG.0308", 2.0),
        (429, _error("APIG.0308"), None, "APIG.0308", None),
        (429, b"slow down", " 0.5 ", "HTTP.429", 0.5),
        (500, _error("APIG.9999", "System error"), None, "APIG.9999", None),
        (502, b"<html>bad gateway</html>", None, "HTTP.502", None),
        (503, b"", "7", "HTTP.503", 7.0),
        (408, b"", None, "HTTP.408", None),
    ],
)
def test_retries(
    status: int, body: bytes, header: str | None, code: str, after: float | None
) -> None:
    verdict = classify(status, body, header)
    assert verdict == Retry(status, code, verdict.msg, after)
    assert verdict.msg
    assert status_key(verdict) == str(status)


def test_a_transport_failure_counts_under_its_code() -> None:
    assert status_key(transport_failure("timeout", "read timed out")) == "timeout"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-1", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("inf", None),
        ("1e999", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_match_pairs_by_canonical_address() -> None:
    answered: list[dict[str, object]] = [
        {"host": "2001:DB8::1", "id": "v6"},
        {"host": "Web.Example.", "id": "name"},
        {"ecs_id": "ecs-1", "id": "ecs"},
        {"host": "2001:db8:0::1", "id": "later twin"},
        {"host": 5, "id": "junk"},
        {"id": "no address"},
    ]
    sent = ["2001:db8::1", "web.example", "ecs-1", "10.0.0.9"]
    found = match(sent, answered)
    assert [info["id"] if info else None for info in found] == ["v6", "name", "ecs", None]
