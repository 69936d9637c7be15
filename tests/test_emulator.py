"""The emulator over real HTTP on loopback: every rule of the members API it emulates."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from worker.emulator import ChannelSpec, Emulator, EmulatorConfig, server

TOKEN = "demo-token"
PROJECT, INSTANCE, CHANNEL = "proj1", "inst1", "chan1"
SAMPLE_REQUESTS = [
    {"members": [{"host": "192.168.2.25", "weight": 1, "member_group_name": "test"}]},
    {
        "members": [
            {
                "ecs_id": "1082720c-3c15-409c-9ae3-4983ddfb6a9d",
                "ecs_name": "APIGtest02",
                "weight": 2,
            }
        ]
    },
]
# Example 1 of the source page's 201 response, verbatim.
SAMPLE_MEMBER = orjson.loads(
    b'{ "host" : "192.168.2.25", "weight" : 1, "is_backup" : false, "member_group_name" :'
    b' "test", "status" : 1, "port" : 22, "ecs_id" : "3082720c-3c15-409c-9ae3-4983ddfb6a9d",'
    b' "ecs_name" : "APIGtest", "id" : "683b6807cad54122a6777ad047a6178e", "vpc_channel_id" :'
    b' "105c6902457144a4820dff8b1ad63331", "create_time" : "2020-07-23T09:13:24Z",'
    b' "member_group_id" : "cf868f0224084710a1e188b7d3057c52" }'
)
HEX32 = re.compile(r"[0-9a-f]{32}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class Client:
    """A thin client for one emulator: URLs for a channel, JSON in and out."""

    def __init__(self, emulator: Emulator, session: aiohttp.ClientSession) -> None:
        self.emulator = emulator
        self.session = session

    def url(
        self, p: str = PROJECT, i: str = INSTANCE, c: str = CHANNEL, product: str = "apic"
    ) -> str:
        return f"{self.emulator.url}/v2/{p}/{product}/instances/{i}/vpc-channels/{c}/members"

    async def call(
        self,
        method: str,
        url: str,
        body: object = None,
        *,
        token: str | None = TOKEN,
        raw: object = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        headers = {"X-Auth-Token": token} if token is not None else {}
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.session.request(method, url, data=data, headers=headers) as response:
            text = await response.read()
            return response.status, answered(response.headers, text), response.headers

    async def post(self, members: list[dict[str, object]], **kw: Any) -> tuple[int, Any]:
        status, payload, _ = await self.call(
            "POST", kw.pop("url", None) or self.url(), {"members": members}, **kw
        )
        return status, payload


def answered(headers: Mapping[str, str], text: bytes) -> Any:
    """The JSON payload of an answer, once its request id is checked: every answer carries
    ``X-Request-Id`` (32 hex), and an error body names the same id (then dropped here, so
    tests compare bodies without it)."""
    request_id = headers["X-Request-Id"]
    assert HEX32.fullmatch(request_id)
    payload = orjson.loads(text) if text else None
    if isinstance(payload, dict) and "error_code" in payload:
        assert payload.pop("request_id") == request_id
    return payload


@asynccontextmanager
async def running(
    *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **settings: Any
) -> AsyncIterator[Client]:
    settings.setdefault("channels", (ChannelSpec(PROJECT, INSTANCE, CHANNEL),))
    async with (
        Emulator(EmulatorConfig(**settings), sleep=sleep) as emulator,
        aiohttp.ClientSession() as session,
    ):
        yield Client(emulator, session)


class FirstAnswerHeld:
    """An answer delay that holds the first answer until the test releases it, so that
    request is still being handled, deterministically; later delays pass at once."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if self.holding.is_set():
            return
        self.holding.set()
        await self.release.wait()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for the server side to catch up with something the client did."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def members_of(
    client: Client, key: tuple[str, str, str] = (PROJECT, INSTANCE, CHANNEL)
) -> list[dict[str, object]]:
    return [dict(m) for m in client.emulator.state.channels[key]]


def error(code: str, message: str) -> dict[str, str]:
    return {"error_code": code, "error_msg": message}


def invalid(name: str) -> dict[str, str]:
    return error(
        "APIG.2012",
        f"Invalid parameter value,parameterName:{name}. Please refer to the support documentation",
    )


# --- the sample requests and responses of the source page ---------------------------------


@pytest.mark.parametrize("request_body", SAMPLE_REQUESTS)
async def test_sample_requests_answer_with_the_sample_response_shape(
    request_body: dict[str, list[dict[str, object]]],
) -> None:
    async with running() as client:
        status, body, headers = await client.call("POST", client.url(), request_body)
    assert status == 201
    assert headers["Content-Type"].startswith("application/json")
    assert body["total"] == body["size"] == 1
    (member,) = body["members"]
    assert list(member) == list(SAMPLE_MEMBER)
    assert {k: type(v) for k, v in member.items()} == {k: type(v) for k, v in SAMPLE_MEMBER.items()}
    sent = request_body["members"][0]
    assert {k: member[k] for k in sent} == sent
    assert HEX32.fullmatch(member["id"]) and TIME.fullmatch(member["create_time"])
    assert member["vpc_channel_id"] == CHANNEL


@pytest.mark.parametrize(
    ("host", "status"),
    [("::1:8080", 400), ("[::1]:8080", 201), ("127.0.0.1:8080", 201), ("a b", 400), ("", 400)],
)
async def test_a_request_whose_host_header_is_no_authority_is_refused(
    host: str, status: int
) -> None:
    async with running() as client:
        headers = {"X-Auth-Token": TOKEN, "Host": host}
        body = orjson.dumps({"members": [{"host": "10.0.0.1"}]})
        async with client.session.post(client.url(), data=body, headers=headers) as response:
            assert response.status == status


async def test_absent_fields_take_the_documented_defaults_and_the_channel_port() -> None:
    async with running(channels=(ChannelSpec(PROJECT, INSTANCE, CHANNEL, port=8443),)) as client:
        status, body = await client.post([{"host": "10.0.0.1"}])
    assert status == 201
    (member,) = body["members"]
    assert member["weight"] == 1 and member["is_backup"] is False and member["status"] == 1
    assert member["port"] == 8443
    assert member["member_group_name"] == member["member_group_id"] == ""


async def test_member_group_names_map_to_stable_ids() -> None:
    async with running() as client:
        _, first = await client.post([{"host": "10.0.0.1", "member_group_name": "a"}])
        _, second = await client.post(
            [
                {"host": "10.0.0.2", "member_group_name": "a"},
                {"host": "10.0.0.3", "member_group_name": "b"},
            ]
        )
    a1 = first["members"][0]["member_group_id"]
    a2, b = (m["member_group_id"] for m in second["members"])
    assert a1 == a2 != b and HEX32.fullmatch(a1) and HEX32.fullmatch(b)


# --- upsert semantics ---------------------------------------------------------------------


async def test_first_definition_of_an_address_in_a_body_wins() -> None:
    async with running() as client:
        status, body = await client.post(
            [
                {"host": "10.0.0.1", "weight": 5},
                {"host": "10.0.0.2"},
                {"host": "10.0.0.1", "weight": 9},
                {"host": "[10.0.0.2]", "weight": 7},
            ]
        )
    assert status == 201
    assert body["total"] == body["size"] == 2
    assert [(m["host"], m["weight"]) for m in body["members"]] == [("10.0.0.1", 5), ("10.0.0.2", 1)]
    assert len(members_of(client)) == 2


async def test_an_existing_address_is_updated_in_place() -> None:
    async with running() as client:
        _, created = await client.post([{"host": "2001:DB8::1", "weight": 5, "port": 81}])
        _, updated = await client.post(
            [{"host": "10.9.9.9"}, {"host": "2001:db8::1", "weight": 6, "is_backup": True}]
        )
        stats = client.emulator.stats
    old, new = created["members"][0], updated["members"][1]
    assert new["id"] == old["id"] and new["create_time"] == old["create_time"]
    # The new definition replaces the old: absent fields go back to their defaults.
    assert (new["weight"], new["is_backup"], new["port"]) == (6, True, 80)
    assert [m["host"] for m in updated["members"]] == ["10.9.9.9", "2001:db8::1"]
    assert len(members_of(client)) == 2
    assert (stats.members_created, stats.members_updated) == (2, 1)


async def test_ecs_members_are_keyed_by_ecs_id_and_given_a_host_as_the_service_does() -> None:
    # The reference's example answers a body of an ecs_id alone with a host (192.168.0.17).
    async with running() as client:
        _, first = await client.post([{"ecs_id": "vm-1", "ecs_name": "one"}])
        _, body = await client.post(
            [
                {"ecs_id": "vm-1", "ecs_name": "renamed"},
                {"host": "10.0.0.1", "ecs_id": "vm-1", "ecs_name": "two"},  # vm-1 again
            ]
        )
    assert len(members_of(client)) == 1
    assert body["members"][0]["ecs_name"] == "renamed"
    host = first["members"][0]["host"]
    assert host.startswith("192.168.") and body["members"][0]["host"] == host


async def test_unknown_keys_are_ignored_and_null_means_absent() -> None:
    async with running() as client:
        status, body = await client.post([{"host": "10.0.0.1", "weight": None, "colour": "red"}])
    assert status == 201
    assert "colour" not in body["members"][0] and body["members"][0]["weight"] == 1


async def test_both_path_prefixes_reach_the_same_channel() -> None:
    async with running() as client:
        await client.post([{"host": "10.0.0.1"}], url=client.url(product="apic"))
        await client.post([{"host": "10.0.0.1", "weight": 3}], url=client.url(product="apigw"))
        status, listing, _ = await client.call("GET", client.url(product="apigw"))
    assert client.emulator.stats.members_updated == 1
    assert status == 200 and listing["total"] == 1 and listing["members"][0]["weight"] == 3


async def test_apig_answers_carry_health_status_and_romas_do_not() -> None:
    """vendor-facts: APIG's member answers also carry health_status; ROMA's do not."""
    async with running() as client:
        apig = await client.post([{"host": "10.0.0.1"}], url=client.url(product="apigw"))
        roma = await client.post([{"host": "10.0.0.2"}], url=client.url(product="apic"))
        listed = {
            product: (await client.call("GET", client.url(product=product)))[1]["members"]
            for product in ("apigw", "apic")
        }
    assert apig[1]["members"][0]["health_status"] == "unknown"
    assert [m["health_status"] for m in listed["apigw"]] == ["unknown", "unknown"]
    assert not any("health_status" in m for m in (*roma[1]["members"], *listed["apic"]))
    assert not any("health_status" in m for m in members_of(client))


# --- validation: each error code with its status and message --------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "APIG.2000"),
        (b"", "APIG.2000"),
        (b"[]", "APIG.2000"),
        (b'{"members": 5}', "APIG.2012"),
        (b"{}", "APIG.2001"),
        (b'{"members": []}', "APIG.2001"),
        (b'{"members": null}', "APIG.2001"),
        (b'{"members": [5]}', "APIG.2012"),
    ],
)
async def test_body_shape_errors(raw: bytes, code: str) -> None:
    async with running() as client:
        status, body, _ = await client.call("POST", client.url(), raw=raw)
    assert status == 400 and body["error_code"] == code
    if code == "APIG.2000":
        assert body["error_msg"].startswith("Parameter error: Serialization error: ")
    if code == "APIG.2001":
        assert body["error_msg"] == (
            "The request parameters must be specified,parameterName:members. "
            "Please refer to the support documentation"
        )
    if code == "APIG.2012":
        assert body == invalid("members")


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (
            {"host": "10.0.0.1", "weight": 10001},
            error(
                "APIG.2004",
                "The parameter value is outside the allowable range,parameterName:weight. "
                "Please refer to the support documentation",
            ),
        ),
        ({"host": "10.0.0.1", "port": 65536}, None),
        ({"host": "10.0.0.1", "status": 3}, None),
        ({"host": "10.0.0.1", "weight": -1}, None),
        ({"host": "10.0.0.1", "weight": "1"}, invalid("weight")),
        ({"host": "10.0.0.1", "weight": True}, invalid("weight")),
        ({"host": "10.0.0.1", "weight": 1.0}, invalid("weight")),
        ({"host": "10.0.0.1", "is_backup": 1}, invalid("is_backup")),
        ({"host": 167772161}, invalid("host")),
        ({"host": "10.0.0.256"}, invalid("host")),
        ({"host": "010.0.0.1"}, invalid("host")),
        ({"host": " 10.0.0.1"}, invalid("host")),
        ({"host": "a" * 65}, invalid("host")),
        ({"host": "10.0.0.1", "member_group_name": "bad name"}, invalid("member_group_name")),
        ({"ecs_id": "vm/1", "ecs_name": "one"}, invalid("ecs_id")),
        # Both ECS fields are mandatory for an ECS member (the API's page).
        (
            {"ecs_id": "vm-1"},
            error(
                "APIG.2001",
                "The request parameters must be specified,parameterName:ecs_name. "
                "Please refer to the support documentation",
            ),
        ),
        (
            {"ecs_name": "web01", "port": 80},
            error(
                "APIG.2001",
                "The request parameters must be specified,parameterName:ecs_id. "
                "Please refer to the support documentation",
            ),
        ),
        ({"ecs_id": "vm-1", "ecs_name": "n" * 65}, invalid("ecs_name")),
        ({"ecs_id": "vm-1", "ecs_name": ["x"]}, invalid("ecs_name")),
        (
            {"weight": 1},
            error(
                "APIG.2001",
                "The request parameters must be specified,parameterName:host. "
                "Please refer to the support documentation",
            ),
        ),
    ],
)
async def test_a_bad_member_rejects_the_whole_request(
    member: dict[str, object], expected: dict[str, str] | None
) -> None:
    async with running() as client:
        # The same good values go first, so the fast path has seen them before.
        status, body = await client.post(
            [{"host": "10.0.0.9", "weight": 1, "port": 80, "status": 1}, member]
        )
    assert status == 400
    if expected is None:
        assert body["error_code"] == "APIG.2004"
    else:
        assert body == expected
    assert members_of(client) == []
    assert client.emulator.stats.members_created == 0


async def test_a_value_good_for_one_field_is_not_taken_as_good_for_another() -> None:
    async with running() as client:
        assert (await client.post([{"host": "10.0.0.1", "weight": 10000}]))[0] == 201
        status, body = await client.post([{"host": "10.0.0.2", "status": 10000}])
    assert status == 400 and body["error_code"] == "APIG.2004"
    assert body["error_msg"].startswith(
        "The parameter value is outside the allowable range,parameterName:status."
    )


# --- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong", ""])
async def test_a_missing_or_unknown_token_gets_401(token: str | None) -> None:
    async with running() as client:
        for method in ("POST", "GET"):
            status, body, _ = await client.call(
                method, client.url(), {"members": [{"host": "10.0.0.1"}]}, token=token
            )
            assert status == 401
            assert body == error("APIG.1002", "Incorrect token or token resolution failed")
    assert members_of(client) == []


async def test_a_read_only_token_may_get_but_not_change() -> None:
    async with running(tokens=("rw",), read_only_tokens=("ro",)) as client:
        await client.post([{"host": "10.0.0.1"}], token="rw")
        member_id = members_of(client)[0]["id"]
        status, listing, _ = await client.call("GET", client.url(), token="ro")
        assert status == 200 and listing["total"] == 1
        for method, url in (
            ("POST", client.url()),
            ("PUT", client.url()),
            ("DELETE", f"{client.url()}/{member_id}"),
        ):
            status, body, _ = await client.call(
                method, url, {"members": [{"host": "10.0.0.2"}]}, token="ro"
            )
            assert status == 403
            assert body == error("APIG.1005", "No permissions to request this method")
    assert len(members_of(client)) == 1


# --- channels -----------------------------------------------------------------------------


async def test_unknown_instance_and_unknown_channel() -> None:
    async with running() as client:
        status, body = await client.post([{"host": "10.0.0.1"}], url=client.url(i="nope"))
        assert status == 404
        assert body == error("APIG.3030", "The instance does not exist;id:nope")
        status, body = await client.post([{"host": "10.0.0.1"}], url=client.url(c="gone"))
        assert status == 404
        assert body == error("APIG.3023", "The VPC channel does not exist,id:gone")
        status, _, _ = await client.call("GET", client.url(p="other"))
        assert status == 404


async def test_auto_create_makes_channels_on_first_use() -> None:
    async with running(channels=(), auto_create=True) as client:
        status, body = await client.post([{"host": "10.0.0.1"}], url=client.url(i="new", c="c9"))
    assert status == 201 and body["members"][0]["port"] == 80
    assert ("proj1", "new", "c9") in client.emulator.state.channels


CHANNEL_FULL = error(
    "APIG.3110",
    "The number of cloud servers in the VPC channel exceeds the maximum allowed limit",
)
REQUEST_TOO_LARGE = error(
    "APIG.2003",
    "The parameter value is too large,parameterName:members. "
    "Please refer to the support documentation",
)


async def test_channel_member_quota_counts_only_new_addresses_and_answers_403() -> None:
    async with running(
        channels=(ChannelSpec(PROJECT, INSTANCE, CHANNEL, max_members=2),)
    ) as client:
        assert (await client.post([{"host": "10.0.0.1"}, {"host": "10.0.0.2"}]))[0] == 201
        status, body = await client.post([{"host": "10.0.0.1", "weight": 4}, {"host": "10.0.0.2"}])
        assert status == 201
        status, body = await client.post([{"host": "10.0.0.1"}, {"host": "10.0.0.3"}])
        assert (status, body) == (403, CHANNEL_FULL)
        put = await client.call(
            "PUT", client.url(), {"members": [{"host": f"10.0.1.{n}"} for n in range(3)]}
        )
        assert put[:2] == (403, CHANNEL_FULL)
    assert [m["host"] for m in members_of(client)] == ["10.0.0.1", "10.0.0.2"]
    assert members_of(client)[0]["weight"] == 4


async def test_a_put_naming_a_group_replaces_that_group_alone() -> None:
    """vendor-facts: with member_group_name, only that group is replaced and the body's
    entries of other groups are ignored; the members of other groups stay."""
    a, b = {"member_group_name": "a"}, {"member_group_name": "b"}
    async with running(
        channels=(ChannelSpec(PROJECT, INSTANCE, CHANNEL, max_members=3),)
    ) as client:
        await client.post([{"host": "10.0.0.1", **a}, {"host": "10.0.0.2", **b}])
        await client.post([{"host": "10.0.0.5", **a}])
        kept = members_of(client)[2]["id"]
        status, body, _ = await client.call(
            "PUT",
            client.url(),
            {
                "member_group_name": "a",
                "members": [
                    {"host": "10.0.0.3", **a},
                    {"host": "10.0.0.4", **b},
                    {"host": "10.0.0.5", "weight": 9, **a},
                ],
            },
        )
        assert status == 200 and [m["host"] for m in body["members"]] == ["10.0.0.3", "10.0.0.5"]
        after = {(m["host"], m["member_group_name"]): m for m in members_of(client)}
        assert set(after) == {("10.0.0.2", "b"), ("10.0.0.3", "a"), ("10.0.0.5", "a")}
        assert after["10.0.0.5", "a"]["id"] == kept and after["10.0.0.5", "a"]["weight"] == 9
        assert client.emulator.stats.members_deleted == 1
        # The quota counts the members that stay in other groups: 2 of b's would make 4.
        status, body, _ = await client.call(
            "PUT",
            client.url(),
            {"member_group_name": "b", "members": [{"host": f"10.0.1.{n}", **b} for n in range(2)]},
        )
        assert (status, body) == (403, CHANNEL_FULL)
        for group in (5, "bad name", ""):
            status, body, _ = await client.call(
                "PUT", client.url(), {"member_group_name": group, "members": [{"host": "10.0.0.9"}]}
            )
            assert status == 400 and "parameterName:member_group_name" in body["error_msg"]
    assert len(members_of(client)) == 3


async def test_batch_disable_and_enable_set_the_status_of_known_members_only() -> None:
    async with running() as client:
        _, added = await client.post([{"host": "10.0.0.1"}, {"host": "10.0.0.2"}])
        first, second = (m["id"] for m in added["members"])
        url = client.url()
        disabled = await client.call("POST", url + "/batch-disable", {"member_ids": [first]})
        assert disabled[:2] == (204, None)
        assert [m["status"] for m in members_of(client)] == [2, 1]
        # An id no member has refuses the whole request.
        status, body, _ = await client.call(
            "POST", url + "/batch-disable", {"member_ids": [second, "f" * 32]}
        )
        assert (status, body["error_code"]) == (404, "APIG.3024") and "f" * 32 in body["error_msg"]
        assert [m["status"] for m in members_of(client)] == [2, 1]
        assert (await client.call("POST", url + "/batch-enable", {"member_ids": [first]}))[0] == 204
        assert [m["status"] for m in members_of(client)] == [1, 1]
        for given, code in (
            ({}, "APIG.2001"),
            ({"member_ids": []}, "APIG.2001"),
            ({"member_ids": first}, "APIG.2012"),
            ({"member_ids": [1]}, "APIG.2012"),
        ):
            status, body, _ = await client.call("POST", url + "/batch-enable", given)
            assert (status, body["error_code"]) == (400, code)
            assert "parameterName:member_ids" in body["error_msg"]


async def test_a_channel_holds_ten_ecs_members_by_default_as_the_vendor_publishes() -> None:
    """members-api: ECS members in one channel, 10 by default; past it 403 APIG.3110,
    nothing applied. IP members are not counted (not documented either way)."""
    ecs = [{"ecs_id": f"vm-{n}", "ecs_name": f"web{n}"} for n in range(11)]
    async with running() as client:
        assert (await client.post(ecs[:10] + [{"host": f"10.0.1.{n}"} for n in range(50)]))[
            0
        ] == 201
        assert (await client.post([{**ecs[0], "weight": 5}]))[0] == 201  # an update
        assert await client.post(ecs[10:]) == (403, CHANNEL_FULL)
        put = await client.call("PUT", client.url(), {"members": ecs})
        assert put[:2] == (403, CHANNEL_FULL)
        # A replace that drops one makes room for another.
        put = await client.call("PUT", client.url(), {"members": ecs[1:]})
        assert put[0] == 200
    async with running(max_ecs_members_per_channel=None) as client:
        assert (await client.post(ecs))[0] == 201


async def test_default_channel_quota_is_403_and_the_request_cap_400() -> None:
    async with running(max_members_per_channel=1, max_members_per_request=2) as client:
        status, body = await client.post([{"host": "10.0.0.1"}, {"host": "10.0.0.2"}])
        assert (status, body) == (403, CHANNEL_FULL)
        status, body = await client.post([{"host": "10.0.0.1"}] * 3)
        assert (status, body) == (400, REQUEST_TOO_LARGE)
        assert (await client.post([{"host": "10.0.0.1"}] * 2))[0] == 201


async def test_a_body_over_12_mb_gets_413() -> None:
    async with running() as client:
        raw = b'{"members": [' + b" " * (12 * 1024 * 1024) + b"]}"
        status, body, _ = await client.call("POST", client.url(), raw=raw)
    assert status == 413 and body["error_code"] == "APIG.0201"


# --- listing and deleting -------------------------------------------------------------------


async def test_list_pages_and_filters() -> None:
    async with running() as client:
        await client.post(
            [
                {"host": f"10.0.0.{n}", "member_group_name": "even" if n % 2 == 0 else "odd"}
                for n in range(1, 8)
            ]
            + [{"ecs_id": "vm-1", "ecs_name": "web01"}]
        )
        url = client.url()
        _, page, _ = await client.call("GET", f"{url}?offset=2&limit=3")
        assert (page["total"], page["size"]) == (8, 3)
        assert [m["host"] for m in page["members"]] == ["10.0.0.3", "10.0.0.4", "10.0.0.5"]
        _, page, _ = await client.call("GET", f"{url}?offset=7")
        assert (page["total"], page["size"]) == (8, 1)
        _, page, _ = await client.call("GET", f"{url}?member_group_name=even")
        assert [m["host"] for m in page["members"]] == ["10.0.0.2", "10.0.0.4", "10.0.0.6"]
        _, page, _ = await client.call("GET", f"{url}?name=web")
        assert [m["ecs_id"] for m in page["members"]] == ["vm-1"]
        _, page, _ = await client.call("GET", f"{url}?name=web&precise_search=name")
        assert page["total"] == 0
        _, odd, _ = await client.call("GET", f"{url}?member_group_name=odd")
        group_id = odd["members"][0]["member_group_id"]
        _, page, _ = await client.call("GET", f"{url}?member_group_id={group_id}")
        assert page["total"] == 4
        status, body, _ = await client.call("GET", f"{url}?offset=x")
        assert status == 400 and body == invalid("offset")


@pytest.mark.parametrize(
    ("query", "first", "size"),
    [
        ("", 0, 20),
        ("?limit=", 0, 20),
        ("?limit=0", 0, 20),
        ("?limit=-7", 0, 20),
        ("?limit=1", 0, 1),
        ("?limit=500", 0, 500),
        ("?limit=501", 0, 500),
        ("?limit=99999999", 0, 500),
        ("?offset=-3&limit=2", 0, 2),
        ("?offset=505&limit=%2B10", 505, 5),
        ("?offset=600", 600, 0),
    ],
)
async def test_list_paging_clamps_as_the_service_does(query: str, first: int, size: int) -> None:
    async with running() as client:
        members = [{"host": f"10.0.{n // 250}.{n % 250}"} for n in range(510)]
        assert (await client.post(members))[0] == 201
        status, page, _ = await client.call("GET", client.url() + query)
    assert status == 200 and page["total"] == 510 and page["size"] == size
    assert [m["host"] for m in page["members"]] == [m["host"] for m in members[first:][:size]]


@pytest.mark.parametrize("query", ["limit=x", "limit=1.5", "offset=1e3", "limit=%EF%BC%91"])
async def test_list_refuses_a_value_that_is_not_a_whole_number(query: str) -> None:
    name = query.partition("=")[0]
    async with running() as client:
        status, body, _ = await client.call("GET", f"{client.url()}?{query}")
    assert (status, body) == (400, invalid(name))


async def test_delete_then_delete_again() -> None:
    async with running() as client:
        _, body = await client.post([{"host": "10.0.0.1"}, {"host": "10.0.0.2"}])
        url = f"{client.url()}/{body['members'][0]['id']}"
        status, payload, _ = await client.call("DELETE", url)
        assert (status, payload) == (204, None)
        status, payload, _ = await client.call("DELETE", url)
        member_id = body["members"][0]["id"]
        assert (status, payload) == (
            404,
            error("APIG.3024", f"The VPC instance does not exist,id:{member_id}"),
        )
    assert [m["host"] for m in members_of(client)] == ["10.0.0.2"]


async def test_put_makes_the_channel_hold_exactly_the_body() -> None:
    async with running() as client:
        _, first = await client.post([{"host": "10.0.0.1"}, {"host": "10.0.0.2"}])
        status, body, _ = await client.call(
            "PUT",
            client.url(),
            {"members": [{"host": "10.0.0.2", "weight": 9}, {"host": "10.0.0.3"}]},
        )
    assert status == 200 and body["total"] == 2
    assert body["members"][0]["id"] == first["members"][1]["id"]
    assert [(m["host"], m["weight"]) for m in members_of(client)] == [
        ("10.0.0.2", 9),
        ("10.0.0.3", 1),
    ]


# --- throttling and faults ------------------------------------------------------------------


async def test_throttling_answers_429_with_retry_after_per_project() -> None:
    async with running(rate=0.5, burst=2, auto_create=True) as client:
        statuses = [(await client.post([{"host": "10.0.0.1"}]))[0] for _ in range(3)]
        status, body, headers = await client.call(
            "POST", client.url(), {"members": [{"host": "10.0.0.1"}]}
        )
        other = await client.post([{"host": "10.0.0.1"}], url=client.url(p="proj2"))
    assert statuses == [201, 201, 429]
    assert status == 429
    assert body == error(
        "APIG.0308",
        "The throttling threshold has been reached: policy user over ratelimit,"
        "limit:0.5,time:1 second",
    )
    assert int(headers["Retry-After"]) >= 1
    assert other[0] == 201
    assert client.emulator.stats.throttled == 2


async def test_fail_rate_answers_500_and_applies_nothing() -> None:
    async with running(fail_rate=1.0, seed=1) as client:
        status, body = await client.post([{"host": "10.0.0.1"}])
    assert (status, body) == (500, error("APIG.9999", "System error"))
    assert members_of(client) == []
    assert client.emulator.stats.faults == {"fail": 1}


async def test_fail_after_commit_applies_then_answers_500() -> None:
    async with running(fail_after_commit_rate=1.0, seed=1) as client:
        status, body = await client.post([{"host": "10.0.0.1"}])
    assert (status, body) == (500, error("APIG.9999", "System error"))
    assert [m["host"] for m in members_of(client)] == ["10.0.0.1"]
    assert client.emulator.stats.faults == {"fail_after_commit": 1}


async def test_reset_closes_the_connection_and_applies_nothing() -> None:
    async with running(reset_rate=1.0, seed=1) as client:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.post([{"host": "10.0.0.1"}])
        stats = client.emulator.stats
        assert stats.faults == {"reset": 1} and stats.by_status == {}
        _, observed, _ = await client.call("GET", f"{client.emulator.url}/_emulator/stats")
    assert members_of(client) == []
    assert observed["faults"] == {"reset": 1}


async def test_slow_and_latency_faults_still_answer() -> None:
    async with running(slow_rate=1.0, slow_ms=5, latency_ms=2, jitter_ms=2, seed=3) as client:
        status, _ = await client.post([{"host": "10.0.0.1"}])
    assert status == 201
    assert client.emulator.stats.faults == {"slow": 1}


async def test_seeded_faults_repeat_run_to_run() -> None:
    async def outcomes() -> list[int]:
        async with running(fail_rate=0.5, seed=42) as client:
            return [(await client.post([{"host": f"10.0.0.{n}"}]))[0] for n in range(1, 21)]

    first = await outcomes()
    assert first == await outcomes()
    assert set(first) == {201, 500}


# --- observability ------------------------------------------------------------------------


async def test_stats_state_and_arrivals_endpoints() -> None:
    async with running(record_arrivals=True) as client:
        await client.post([{"host": "10.0.0.1"}])
        await client.call("GET", client.url(), token="bad")
        base = client.emulator.url
        _, stats, _ = await client.call("GET", f"{base}/_emulator/stats", token=None)
        _, state, _ = await client.call("GET", f"{base}/_emulator/state", token=None)
        _, arrivals, _ = await client.call("GET", f"{base}/_emulator/arrivals", token=None)
    assert stats["requests_by_method"] == {"POST": 1, "GET": 1}
    assert stats["responses_by_status"] == {"201": 1, "401": 1}
    assert stats["members_created"] == 1 and stats["throttled"] == 0
    (channel,) = state["channels"]
    assert (channel["project_id"], channel["vpc_channel_id"]) == (PROJECT, CHANNEL)
    assert channel["members"][0]["host"] == "10.0.0.1"
    assert len(arrivals["arrivals"]) == 2
    assert arrivals["arrivals"] == sorted(arrivals["arrivals"])


async def test_arrivals_are_not_recorded_unless_asked() -> None:
    async with running() as client:
        status, _, _ = await client.call("GET", f"{client.emulator.url}/_emulator/arrivals")
    assert status == 404


async def test_dump_is_written_at_stop(tmp_path: Path) -> None:
    dump = tmp_path / "state.json"
    async with running(dump=dump) as client:
        await client.post([{"host": "10.0.0.1"}])
    state = orjson.loads(dump.read_bytes())
    assert state["channels"][0]["members"][0]["host"] == "10.0.0.1"


async def test_faults_spare_requests_the_gateway_refused() -> None:
    async with running(fail_rate=1.0, slow_rate=1.0, slow_ms=1, seed=2) as client:
        status, _, _ = await client.call("GET", client.url(), token="bad")
    assert status == 401
    assert client.emulator.stats.faults == {}


# --- request ids ------------------------------------------------------------------------------


async def test_request_ids_are_on_every_answer_unique_and_seeded() -> None:
    async def ids(seed: int) -> list[str]:
        found: list[str] = []
        async with running(seed=seed) as client:
            base = client.emulator.url
            for method, url in (
                ("POST", client.url()),
                ("GET", client.url()),
                ("GET", client.url(c="nope")),
                ("DELETE", f"{client.url()}/{'0' * 32}"),
            ):
                _, _, headers = await client.call(method, url, {"members": [{"host": "h1"}]})
                found.append(headers["X-Request-Id"])
            # Answers from outside the API: aiohttp's own 404 and 405, the test endpoints.
            for method, url, status in (
                ("GET", f"{base}/nowhere", 404),
                ("PATCH", client.url(), 405),
                ("GET", f"{base}/_emulator/stats", 200),
            ):
                async with client.session.request(method, url) as response:
                    assert response.status == status
                    found.append(response.headers["X-Request-Id"])
        return found

    first = await ids(7)
    assert all(HEX32.fullmatch(request_id) for request_id in first)
    assert len(set(first)) == len(first)
    assert first == await ids(7)
    assert first != await ids(8)


# --- concurrent writes to one channel -----------------------------------------------------------

CONFLICT = error("APIG.9999", "database data synchronize failed")
TWO_CHANNELS = (ChannelSpec(PROJECT, INSTANCE, CHANNEL), ChannelSpec(PROJECT, INSTANCE, "chan2"))


async def test_a_write_overlapping_another_on_its_channel_fails_and_applies_nothing() -> None:
    held = FirstAnswerHeld()
    async with running(
        concurrent_write_conflicts=True, latency_ms=1, sleep=held, channels=TWO_CHANNELS
    ) as client:
        first = asyncio.create_task(client.post([{"host": "10.0.0.1"}]))
        await held.holding.wait()  # applied, and still in its answer delay
        member_id = members_of(client)[0]["id"]
        overlapping = [
            await client.post([{"host": "10.0.0.2"}]),
            (await client.call("PUT", client.url(), {"members": [{"host": "10.0.0.3"}]}))[:2],
            (await client.call("DELETE", f"{client.url()}/{member_id}"))[:2],
        ]
        listing = await client.call("GET", client.url())
        elsewhere = await client.post([{"host": "10.0.0.2"}], url=client.url(c="chan2"))
        held.release.set()
        assert (await first)[0] == 201
        after = await client.post([{"host": "10.0.0.4"}])
        stats = client.emulator.stats
    assert overlapping == [(500, CONFLICT)] * 3
    assert (listing[0], listing[1]["total"]) == (200, 1)  # reads never conflict
    assert elsewhere[0] == after[0] == 201
    assert [m["host"] for m in members_of(client)] == ["10.0.0.1", "10.0.0.4"]
    assert stats.faults == {"conflict": 3}
    assert stats.by_status == {201: 3, 500: 3, 200: 1}


async def test_overlapping_writes_both_apply_unless_conflicts_are_asked_for() -> None:
    held = FirstAnswerHeld()
    async with running(latency_ms=1, sleep=held) as client:
        first = asyncio.create_task(client.post([{"host": "10.0.0.1"}]))
        await held.holding.wait()
        second = await client.post([{"host": "10.0.0.2"}])
        held.release.set()
        assert (await first)[0] == second[0] == 201
    assert len(members_of(client)) == 2


# --- what one client can make the emulator hold --------------------------------------------------

MB = 1024 * 1024


def padded(host: str, size: int) -> bytes:
    """A valid members body of exactly ``size`` bytes."""
    head = b'{"members": [{"host": "%s"}]' % host.encode()
    return head + b" " * (size - len(head) - 1) + b"}"


async def test_bodies_past_the_budget_get_503_until_held_ones_are_answered() -> None:
    held = FirstAnswerHeld()
    async with running(body_budget_mb=12, latency_ms=1, sleep=held) as client:
        bodies = client.emulator.api.bodies
        first = asyncio.create_task(
            client.call("POST", client.url(), raw=padded("10.0.0.1", 8 * MB))
        )
        await held.holding.wait()
        assert bodies.held == 8 * MB  # held from its first byte until it is answered
        status, body, headers = await client.call(
            "POST", client.url(), raw=padded("10.0.0.2", 5 * MB)
        )
        assert (status, body) == (503, error("APIG.0202", "Backend unavailable"))
        assert headers["Retry-After"] == "1"
        assert bodies.held == 8 * MB  # the refused body was let go at once
        assert (await client.post([{"host": "10.0.0.3"}]))[0] == 201  # small ones still fit
        held.release.set()
        assert (await first)[0] == 201
        assert bodies.held == 0
        assert (await client.call("POST", client.url(), raw=padded("10.0.0.2", 5 * MB)))[0] == 201
    assert [m["host"] for m in members_of(client)] == ["10.0.0.1", "10.0.0.3", "10.0.0.2"]
    assert bodies.held == 0


async def test_a_streamed_body_past_12_mb_gets_413_and_is_let_go() -> None:
    async def thirteen_megabytes() -> AsyncIterator[bytes]:
        for _ in range(13):
            yield b" " * MB

    async with running() as client:
        status, body, _ = await client.call("POST", client.url(), raw=thirteen_megabytes())
        held = client.emulator.api.bodies.held
    assert (status, body) == (413, error("APIG.0201", "Request entity too large"))
    assert held == 0


async def test_a_client_that_hangs_up_mid_body_leaves_nothing_held() -> None:
    async with running() as client:
        bodies = client.emulator.api.bodies
        path = client.url().removeprefix(client.emulator.url)
        _reader, writer = await asyncio.open_connection("127.0.0.1", client.emulator.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {TOKEN}\r\n"
            f"Content-Length: {4 * MB}\r\n\r\n".encode()
            + b" " * MB
        )
        await writer.drain()
        await eventually(lambda: bodies.held == 4 * MB)  # a declared length is taken whole
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: bodies.held == 0)


# --- binding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exposed", [True, False])
async def test_binding_beyond_loopback_warns_in_the_log_and_once_on_stderr(
    exposed: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing here binds beyond loopback: the check that decides is made to say so.
    monkeypatch.setattr(server, "is_loopback", lambda host: not exposed)
    with capture_logs() as events:
        async with Emulator(EmulatorConfig()) as emulator:
            url = emulator.url
    warnings = [event for event in events if event["log_level"] == "warning"]
    stderr = capsys.readouterr().err
    if exposed:
        assert warnings == [
            {"event": "emulator_exposed", "host": "127.0.0.1", "url": url, "log_level": "warning"}
        ]
        assert stderr.count("\n") == 1 and "reachable from other machines" in stderr
    else:
        assert warnings == [] and stderr == ""
