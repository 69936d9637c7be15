"""Authentication over real HTTP on loopback: AK/SK signatures (``worker.signing`` signs
here and verifies in the emulator), IAM password logins and tokens that expire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs
from yarl import URL

from tests.test_emulator import (
    CHANNEL,
    HEX32,
    INSTANCE,
    PROJECT,
    TOKEN,
    answered,
    error,
)
from worker import signing
from worker.emulator import ChannelSpec, Emulator, EmulatorConfig
from worker.emulator.iam import parse_iam_user

AK, SK = "AKTEST0000000000", "sk-test-0123456789-secret"
PATH = f"/v2/{PROJECT}/apic/instances/{INSTANCE}/vpc-channels/{CHANNEL}/members"
BODY = orjson.dumps({"members": [{"host": "10.0.0.1", "weight": 2}]})
USER = "acme/ops:p@ss:w/rd"
PASSWORD = "p@ss:w/rd"


class Clock:
    """The emulator's wall clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        return self.now

    @property
    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


Answer = tuple[int, Any, Mapping[str, str]]


class Peer:
    """One emulator and a session to it: signed calls, token calls, IAM logins."""

    def __init__(self, emulator: Emulator, session: aiohttp.ClientSession, clock: Clock) -> None:
        self.emulator = emulator
        self.session = session
        self.clock = clock

    def members(self) -> list[str]:
        channel = self.emulator.state.channels[(PROJECT, INSTANCE, CHANNEL)]
        return [str(m["host"]) for m in channel]

    async def send(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> Answer:
        url = URL(self.emulator.url + target, encoded=True)
        async with self.session.request(method, url, data=body or None, headers=headers) as r:
            return r.status, answered(r.headers, await r.read()), r.headers

    async def signed(
        self,
        method: str,
        path: str = PATH,
        *,
        query: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        ak: str = AK,
        sk: str = SK,
        date: datetime | None = None,
        sent_body: bytes | None = None,
        sent_query: list[tuple[str, str]] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Answer:
        """Sign a request as the SDK would; ``sent_*`` and ``extra`` alter it after signing."""
        query = query or []
        base = {
            "Content-Type": "application/json;charset=UTF-8",
            "User-Agent": "huaweicloud-usdk-python/3.0",
            "X-Project-Id": PROJECT,
            **(headers or {}),
        }
        added = signing.sign(
            ak=ak, sk=sk, method=method, host=f"127.0.0.1:{self.emulator.port}", path=path,
            query=query, headers=base, body=body, date=date or self.clock.moment,
        )  # fmt: skip
        target = signing.request_target(path, query if sent_query is None else sent_query)
        sent = body if sent_body is None else sent_body
        return await self.send(method, target, {**base, **added, **(extra or {})}, sent)

    async def with_token(self, method: str, token: str, body: bytes = b"") -> Answer:
        return await self.send(method, PATH, {"X-Auth-Token": token}, body)

    async def login(self, password: str = PASSWORD, user: str = "ops") -> Answer:
        identity = {
            "methods": ["password"],
            "password": {"user": {"domain": {"name": "acme"}, "name": user, "password": password}},
        }
        body = {"auth": {"identity": identity, "scope": {"project": {"name": "cn-north-4"}}}}
        return await self.send(
            "POST", "/v3/auth/tokens", {"Content-Type": "application/json"}, orjson.dumps(body)
        )


@asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[Peer]:
    settings.setdefault("channels", (ChannelSpec(PROJECT, INSTANCE, CHANNEL),))
    settings.setdefault("aksk", ((AK, SK),))
    clock = Clock()
    async with (
        Emulator(EmulatorConfig(**settings), wallclock=clock) as emulator,
        aiohttp.ClientSession() as session,
    ):
        yield Peer(emulator, session, clock)


def refused(detail: str) -> dict[str, str]:
    return error("APIG.0301", f"Incorrect IAM authentication information: {detail}")


# --- AK/SK ----------------------------------------------------------------------------------------


async def test_signed_requests_are_served_without_a_token() -> None:
    async with serving() as peer:
        status, created, _ = await peer.signed("POST", body=BODY)
        assert status == 201 and created["members"][0]["weight"] == 2
        # Query values with spaces, colons and unicode, sent sorted and encoded as signed.
        for query, total in (
            ([("offset", "0"), ("limit", "50"), ("name", "10.0.0")], 1),
            ([("name", "a b:c 名"), ("limit", "500")], 0),
        ):
            status, listing, _ = await peer.signed("GET", query=query)
            assert (status, listing["total"]) == (200, total)
        member_id = created["members"][0]["id"]
        status, payload, _ = await peer.signed("DELETE", f"{PATH}/{member_id}")
        assert (status, payload) == (204, None)
    assert peer.members() == []


async def test_a_signature_made_with_another_sk_gets_401_and_changes_nothing() -> None:
    async with serving() as peer:
        status, body, _ = await peer.signed("POST", body=BODY, sk="not-the-sk")
    assert status == 401 and body["error_code"] == "APIG.0301"
    assert body["error_msg"].startswith(
        "Incorrect IAM authentication information: verify aksk signature fail, "
        f"canonicalRequest:POST|{PATH}/||content-type:application/json;charset=UTF-8|host:"
    )
    assert SK not in body["error_msg"]
    assert peer.members() == []


async def test_a_pair_is_locked_five_minutes_after_more_than_five_failures_in_a_row() -> None:
    """vendor-facts: after more than five failures in a row an AK/SK pair is locked for 5
    minutes; the right SK is refused until the lock ends."""
    locked = refused(f"ak {AK} is locked for 5 minutes after more than 5 failures in a row")
    async with serving() as peer:
        for _ in range(5):
            assert (await peer.signed("GET", sk="not-the-sk"))[0] == 401
        assert (await peer.signed("GET"))[0] == 200  # five, then a good one: the count resets
        for _ in range(6):
            assert (await peer.signed("GET", sk="not-the-sk"))[0] == 401
        assert (await peer.signed("GET"))[:2] == (401, locked)
        peer.clock.now += 299
        assert (await peer.signed("GET"))[:2] == (401, locked)
        peer.clock.now += 2
        assert (await peer.signed("GET"))[0] == 200
        # An AK the emulator does not hold is never locked: it has nothing to lock.
        for _ in range(7):
            assert (await peer.signed("GET", ak="AKNOBODY"))[:2] == (
                401,
                refused("ak AKNOBODY not exist"),
            )


async def test_an_unknown_ak_gets_401_naming_it() -> None:
    async with serving() as peer:
        answer = await peer.signed("POST", body=BODY, ak="AKNOBODY")
    assert answer[:2] == (401, refused("ak AKNOBODY not exist"))


@pytest.mark.parametrize(
    "change",
    [
        {"sent_body": BODY.replace(b"10.0.0.1", b"10.0.0.9")},
        {"sent_query": [("limit", "2")]},
        {"extra": {"X-Project-Id": "someone-else"}},
    ],
)
async def test_a_request_changed_after_signing_gets_401(change: dict[str, Any]) -> None:
    async with serving() as peer:
        status, body, _ = await peer.signed("POST", body=BODY, **change)
    assert status == 401
    assert body["error_msg"].startswith(
        "Incorrect IAM authentication information: verify aksk signature fail, canonicalRequest:"
    )
    assert peer.members() == []


@pytest.mark.parametrize("skew", [-15 * 60, 15 * 60])
async def test_a_date_up_to_15_minutes_off_is_accepted(skew: int) -> None:
    async with serving() as peer:
        date = peer.clock.moment + timedelta(seconds=skew)
        assert (await peer.signed("POST", body=BODY, date=date))[0] == 201


@pytest.mark.parametrize("skew", [-15 * 60 - 1, 15 * 60 + 1, 86_400])
async def test_a_date_further_off_gets_401_signature_expired(skew: int) -> None:
    async with serving() as peer:
        date = peer.clock.moment + timedelta(seconds=skew)
        answer = await peer.signed("POST", body=BODY, date=date)
        server = peer.clock.moment
    assert answer[:2] == (
        401,
        refused(
            f"signature expired, signature time:{date:%Y%m%dT%H%M%SZ},"
            f"server time:{server:%Y%m%dT%H%M%SZ}"
        ),
    )
    assert peer.members() == []


async def test_a_security_token_is_accepted_only_when_signed() -> None:
    async with serving() as peer:
        signed = await peer.signed("POST", body=BODY, headers={"X-Security-Token": "any value"})
        assert signed[0] == 201
        unsigned = await peer.signed("POST", body=BODY, extra={"X-Security-Token": "any value"})
    assert unsigned[:2] == (
        401,
        refused("verify aksk signature fail, header x-security-token must be signed"),
    )


async def test_a_token_when_present_is_what_authenticates() -> None:
    async with serving(tokens=(TOKEN,)) as peer:
        headers = {"X-Auth-Token": TOKEN, "Authorization": "SDK-HMAC-SHA256 garbage"}
        assert (await peer.send("POST", PATH, headers, BODY))[0] == 201
        headers = {"X-Auth-Token": "wrong", "Authorization": "SDK-HMAC-SHA256 garbage"}
        status, body, _ = await peer.send("POST", PATH, headers, BODY)
    assert (status, body) == (401, error("APIG.1002", "Incorrect token or token resolution failed"))


# --- IAM tokens -----------------------------------------------------------------------------------


async def test_an_iam_login_gets_a_token_the_api_accepts() -> None:
    async with serving(iam_users=(parse_iam_user(USER),), token_ttl=3600.0) as peer:
        status, body, headers = await peer.login()
        token = headers["X-Subject-Token"]
        assert status == 201 and token.startswith("MII")
        issued = datetime.strptime(body["token"]["issued_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
        expires = datetime.strptime(body["token"]["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert issued.replace(tzinfo=UTC) == peer.clock.moment
        assert expires - issued == timedelta(hours=1)
        assert body["token"]["user"] == {"domain": {"name": "acme"}, "name": "ops"}
        assert body["token"]["project"] == {"name": "cn-north-4"}
        assert (await peer.with_token("POST", token, BODY))[0] == 201
        assert peer.emulator.stats.tokens_issued == 1


@pytest.mark.parametrize(
    ("password", "user", "status", "message"),
    [
        ("wrong", "ops", 401, "The username or password is wrong."),
        (PASSWORD, "nobody", 401, "The username or password is wrong."),
    ],
)
async def test_a_wrong_login_gets_iams_error_body(
    password: str, user: str, status: int, message: str
) -> None:
    async with serving(iam_users=(parse_iam_user(USER),)) as peer:
        answer = await peer.login(password, user)
        malformed = await peer.send("POST", "/v3/auth/tokens", {}, b'{"auth": {}}')
    assert answer[:2] == (
        status,
        {"error": {"code": 401, "message": message, "title": "Unauthorized"}},
    )
    assert "X-Subject-Token" not in answer[2] and HEX32.fullmatch(answer[2]["X-Request-Id"])
    assert malformed[:2] == (
        400,
        {"error": {"code": 400, "message": "The request body is invalid.", "title": "Bad Request"}},
    )
    assert peer.emulator.stats.tokens_issued == 0


async def test_an_issued_token_expires_after_its_lifetime() -> None:
    async with serving(iam_users=(parse_iam_user(USER),), token_ttl=30.5) as peer:
        token = (await peer.login())[2]["X-Subject-Token"]
        peer.clock.now += 30.4
        assert (await peer.with_token("GET", token))[0] == 200
        fresh = (await peer.login())[2]["X-Subject-Token"]
        peer.clock.now += 0.1
        expired = await peer.with_token("GET", token)
        assert (await peer.with_token("GET", fresh))[0] == 200  # a new login revoked nothing
        assert (await peer.with_token("GET", TOKEN))[0] == 200  # static tokens never expire
    assert expired[:2] == (401, error("APIG.1002", "Incorrect token or token resolution failed"))


async def test_revoked_tokens_are_refused_and_so_are_new_ones_while_a_revocation_lasts() -> None:
    bad_token = (401, error("APIG.1002", "Incorrect token or token resolution failed"))
    async with serving(iam_users=(parse_iam_user(USER),)) as peer:
        token = (await peer.login())[2]["X-Subject-Token"]
        peer.emulator.api.iam.revoke()
        assert (await peer.with_token("GET", token))[:2] == bad_token
        renewed = (await peer.login())[2]["X-Subject-Token"]
        assert (await peer.with_token("GET", renewed))[0] == 200
        peer.emulator.api.iam.revoke(lasting=True)
        later = await peer.login()
        assert later[0] == 201  # IAM still issues them; the API refuses them
        assert (await peer.with_token("GET", later[2]["X-Subject-Token"]))[:2] == bad_token
        assert (await peer.with_token("GET", TOKEN))[0] == 200  # static tokens are not IAM's


async def test_no_secret_reaches_a_log_or_an_answer() -> None:
    with capture_logs() as events:
        async with serving(iam_users=(parse_iam_user(USER),)) as peer:
            token = (await peer.login())[2]["X-Subject-Token"]
            answers = [
                await peer.login("wrong-password"),
                await peer.signed("POST", body=BODY, sk="wrong-sk"),
                await peer.signed("POST", body=BODY, headers={"X-Security-Token": "sts-value"}),
            ]
            refusal = await peer.signed(
                "POST", body=BODY, sk="wrong-sk", headers={"X-Security-Token": "sts-value"}
            )
    seen = repr(events) + repr(answers) + repr(refusal[:2]) + repr(peer.emulator.config)
    for secret in (SK, PASSWORD, token, "sts-value", "wrong-sk"):
        assert secret not in seen
    assert "x-security-token:***" in refusal[1]["error_msg"]


async def test_a_garbled_signature_is_a_refusal_not_a_crash() -> None:
    async with serving() as peer:
        for authorization in (
            f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature=é",
            f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature=00",
        ):
            date = peer.clock.moment.strftime("%Y%m%dT%H%M%SZ")
            headers = {"Authorization": authorization, "X-Sdk-Date": date}
            status, body, _ = await peer.send("GET", PATH, headers)
            assert (status, body["error_code"]) == (401, "APIG.0301")
