"""What each answer of the members API means for the batch that was sent."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.config import Api
from worker.members import Channel
from worker.protocol import (
    Kind,
    Op,
    Page,
    classify,
    encode_body,
    match,
    members_path,
    no_answer,
    parse_retry_after,
    unreachable,
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
    verdict = classify(Op.POST, 201, orjson.dumps({"total": 1, "size": 1, "members": members}))
    assert (verdict.kind, verdict.payload, verdict.status_key) == (Kind.OK, members, "201")


def test_a_page_of_members_lands_with_its_total() -> None:
    members = [{"host": "10.0.0.1", "id": "a" * 32}]
    body = orjson.dumps({"total": 7, "size": 1, "members": members})
    verdict = classify(Op.LIST, 200, body, request_id="r1")
    assert verdict.kind is Kind.OK
    assert verdict.payload == Page(7, members)
    assert verdict.request_id == "r1"


@pytest.mark.parametrize("member_id", ["..", "../..", "a/b", "a b", "x" * 65, "é"])
def test_a_listed_id_that_could_alter_a_delete_path_means_the_endpoint_is_wrong(
    member_id: str,
) -> None:
    members = [{"host": "10.0.0.1", "id": "a" * 32}, {"host": "10.0.0.2", "id": member_id}]
    body = orjson.dumps({"total": 2, "size": 2, "members": members})
    verdict = classify(Op.LIST, 200, body)
    assert (verdict.kind, verdict.code) == (Kind.UNEXPECTED, "HTTP.200")
    assert "not one" in verdict.msg


def test_a_delete_lands_with_204_and_no_body() -> None:
    assert classify(Op.DELETE, 204, b"").kind is Kind.OK


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"members": 3}',
        b'{"members": [1]}',
        b'{"size": 0}',
        b'{"members": [{"host": "10.0.0.1"}]}',
        b'{"members": [{"host": "10.0.0.1", "id": ""}]}',
    ],
)
def test_a_201_not_of_the_documented_shape_means_the_endpoint_is_wrong(body: bytes) -> None:
    verdict = classify(Op.POST, 201, body)
    assert (verdict.kind, verdict.status, verdict.code) == (Kind.UNEXPECTED, 201, "HTTP.201")


@pytest.mark.parametrize(
    ("op", "status", "content_type"),
    [
        (Op.POST, 200, "application/json"),
        (Op.POST, 202, "application/json"),
        (Op.POST, 204, ""),
        (Op.POST, 301, "text/html"),
        (Op.POST, 302, "text/html"),
        (Op.LIST, 201, "application/json"),
        (Op.LIST, 200, "text/html; charset=utf-8"),
        (Op.DELETE, 200, "application/json"),
        (Op.DELETE, 307, ""),
    ],
)
def test_answers_this_api_never_gives_stop_the_run(op: Op, status: int, content_type: str) -> None:
    body = orjson.dumps({"total": 0, "size": 0, "members": []})
    verdict = classify(op, status, body, content_type=content_type)
    assert verdict.kind is Kind.UNEXPECTED
    assert str(status) in verdict.msg


@pytest.mark.parametrize(
    ("op", "status", "code", "kind"),
    [
        (Op.POST, 400, "APIG.2000", Kind.BAD_REQUEST),
        (Op.POST, 400, "APIG.2001", Kind.BAD_REQUEST),
        (Op.POST, 400, "APIG.2002", Kind.MEMBERS_REFUSED),
        (Op.POST, 400, "APIG.2003", Kind.MEMBERS_REFUSED),
        (Op.POST, 400, "APIG.2004", Kind.MEMBERS_REFUSED),
        (Op.POST, 400, "APIG.2011", Kind.MEMBERS_REFUSED),
        (Op.POST, 400, "APIG.2012", Kind.MEMBERS_REFUSED),
        (Op.POST, 400, "APIG.9876", Kind.BAD_REQUEST),
        (Op.POST, 413, "APIG.0201", Kind.MEMBERS_REFUSED),
        (Op.POST, 401, "APIG.1002", Kind.AUTH_REFUSED),
        (Op.POST, 401, "APIG.0301", Kind.AUTH_REFUSED),
        (Op.POST, 403, "APIG.1005", Kind.CHANNEL_REFUSED),
        (Op.POST, 403, "APIG.3110", Kind.QUOTA),
        (Op.POST, 404, "APIG.3030", Kind.CHANNEL_REFUSED),
        (Op.POST, 404, "APIG.3023", Kind.CHANNEL_REFUSED),
        (Op.POST, 409, "APIG.3999", Kind.BAD_REQUEST),
        (Op.LIST, 400, "APIG.2012", Kind.BAD_REQUEST),
        (Op.LIST, 404, "APIG.3023", Kind.CHANNEL_REFUSED),
        (Op.DELETE, 404, "APIG.3024", Kind.GONE),
        (Op.DELETE, 404, "APIG.3023", Kind.CHANNEL_REFUSED),
        (Op.DELETE, 404, "APIG.3030", Kind.CHANNEL_REFUSED),
    ],
)
def test_refusals(op: Op, status: int, code: str, kind: Kind) -> None:
    verdict = classify(op, status, _error(code, "why"), retry_after="3", request_id="req-9")
    assert (verdict.kind, verdict.status, verdict.code) == (kind, status, code)
    assert "why" in verdict.msg
    assert verdict.status_key == str(status)
    assert verdict.request_id == "req-9"


def test_the_request_id_of_an_error_body_is_kept_when_no_header_gave_one() -> None:
    body = orjson.dumps({"error_code": "APIG.2012", "error_msg": "x", "request_id": "abc"})
    assert classify(Op.POST, 400, body).request_id == "abc"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # A proxy's size limit: halving the batch may get under it, as under the API's.
        (413, b"<html>Request Entity Too Large</html>", Kind.MEMBERS_REFUSED),
        (401, b"", Kind.AUTH_REFUSED),
        # Not the API answering (a wrong endpoint, a proxy): no row and no channel to blame.
        (400, b'{"error_code": 2004}', Kind.UNEXPECTED),
        (403, b"<html>Forbidden</html>", Kind.UNEXPECTED),
        (404, b"<html><body>Not Found</body></html>", Kind.UNEXPECTED),
        (409, b"", Kind.UNEXPECTED),
    ],
)
def test_refusals_without_an_apig_body_use_the_status(status: int, body: bytes, kind: Kind) -> None:
    verdict = classify(Op.POST, status, body)
    assert (verdict.kind, verdict.code) == (kind, f"HTTP.{status}")
    assert verdict.msg


@pytest.mark.parametrize(
    ("status", "body", "header", "code", "after", "kind"),
    [
        (429, _error("APIG.0308"), "2", "APIG.0308", 2.0, Kind.THROTTLED),
        (429, _error("APIG.0308"), None, "APIG.0308", None, Kind.THROTTLED),
        (429, b"slow down", " 0.5 ", "HTTP.429", 0.5, Kind.THROTTLED),
        (500, _error("APIG.9999", "System error"), None, "APIG.9999", None, Kind.SERVER_ERROR),
        (502, b"<html>bad gateway</html>", None, "HTTP.502", None, Kind.SERVER_ERROR),
        (503, b"", "7", "HTTP.503", 7.0, Kind.SERVER_ERROR),
        (408, b"", None, "HTTP.408", None, Kind.SERVER_ERROR),
        (429, b"", "99999999", "HTTP.429", 99999999.0, Kind.THROTTLED),
    ],
)
def test_retries(
    status: int, body: bytes, header: str | None, code: str, after: float | None, kind: Kind
) -> None:
    verdict = classify(Op.POST, status, body, retry_after=header)
    assert (verdict.kind, verdict.status, verdict.code, verdict.retry_after) == (
        kind,
        status,
        code,
        after,
    )
    assert verdict.msg
    assert verdict.status_key == str(status)


def test_a_request_without_an_answer_counts_under_its_code() -> None:
    assert no_answer("timeout", "read timed out").status_key == "timeout"
    assert unreachable("refused").status_key == "connection_error"
    assert not no_answer("timeout", "x").answered


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
