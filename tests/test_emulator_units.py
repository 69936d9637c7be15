"""The emulator's pure parts: body rules against check_member, state, throttle, faults, config,
paging, the body budget, the write guard, IAM tokens and the error answers."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.emulator import errors, paging
from worker.emulator.body import BodyBudget, BodyReader
from worker.emulator.config import (
    ChannelSpec,
    EmulatorConfig,
    parse_aksk,
    parse_channels,
)
from worker.emulator.errors import ApiError, for_problem
from worker.emulator.faults import Fault, FaultPlan, FaultRates, Throttle, Writes, retry_after
from worker.emulator.iam import (
    MAX_LIVE_TOKENS,
    IamError,
    IamUser,
    Issued,
    Tokens,
    TokenState,
    parse_iam_user,
)
from worker.emulator.state import EmulatorState, QuotaExceeded, UnknownChannel, UnknownInstance
from worker.members import MEMBER_FIELDS, Member, canonical_address, check_member, is_loopback

KEY = ("p", "i", "c")

octets = st.integers(0, 255).map(str) | st.sampled_from(["00", "01", "256", "999", ""])
hosts = (
    st.builds(lambda parts: ".".join(parts), st.lists(octets, min_size=3, max_size=5))
    | st.sampled_from(["::1", "2001:DB8::1", "[10.0.0.1]", "web.example.", "a_b", " 1.2.3.4"])
    | st.text(max_size=70)
)
ints = st.integers(-2, 70000) | st.booleans() | st.text(max_size=3) | st.floats(0, 2)
texts = st.sampled_from(["g", "g-1", "web.01", "组", "", "bad name", "x" * 65]) | st.integers(0, 3)
member_dicts = st.fixed_dictionaries(
    {},
    optional={
        "host": hosts,
        "port": ints,
        "weight": ints,
        "status": ints,
        "is_backup": st.booleans() | st.integers(0, 1),
        "member_group_name": texts,
        "ecs_id": st.sampled_from(["vm-1", "vm_2", "vm/3", ""]) | st.text(max_size=4),
        "ecs_name": texts,
    },
)


def reference(item: dict[str, object]) -> tuple[str, str | None]:
    """What the body rules must answer for one member, computed the slow, obvious way."""
    kinds = {"port": int, "weight": int, "status": int, "is_backup": bool}
    for name in MEMBER_FIELDS:  # wrong types are named in field order, not body order
        if name in item and type(item[name]) is not kinds.get(name, str):
            return "APIG.2012", name
    problem = check_member(Member(**item))  # type: ignore[arg-type]
    if problem is not None:
        error = for_problem(problem.field, problem.problem)
        return error.code, problem.field
    address = canonical_address(item.get("host"), item.get("ecs_id"))  # type: ignore[arg-type]
    return "ok", address


# One reader across all examples, so values it remembers from earlier ones are in play.
READER = BodyReader()


@settings(max_examples=1500, deadline=None)
@given(st.lists(member_dicts, min_size=1, max_size=3))
def test_body_rules_answer_exactly_as_check_member_does(items: list[dict[str, object]]) -> None:
    expected = [reference(item) for item in items]
    try:
        entries = READER.parse(orjson.dumps({"members": items}))
    except ApiError as error:
        code, field = next(e for e in expected if e[0] != "ok")
        assert (error.code, error.status) == (code, 400)
        assert f"parameterName:{field}." in error.message
    else:
        assert all(code == "ok" for code, _ in expected)
        assert [address for address, _ in entries] == [address for _, address in expected]


@given(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), min_size=1))
def test_state_first_definition_wins_and_ids_survive_updates(hosts: list[str]) -> None:
    state = EmulatorState.from_specs([ChannelSpec(*KEY)], random.Random(0))
    channel = state.channel(KEY)
    entries = [(h, {"host": h, "weight": n}) for n, h in enumerate(hosts)]
    done = channel.upsert(entries, now=0.0)  # type: ignore[arg-type]
    firsts = list(dict.fromkeys(hosts))
    assert [m["host"] for m in done.members] == firsts
    assert [m["weight"] for m in done.members] == [hosts.index(h) for h in firsts]
    ids = {m["host"]: (m["id"], m["create_time"]) for m in done.members}
    again = channel.upsert([(h, {"host": h, "weight": 7}) for h in hosts], now=86400.0)
    assert {m["host"]: (m["id"], m["create_time"]) for m in again.members} == ids
    assert (again.created, again.updated) == (0, len(firsts))
    assert len(channel) == len(firsts)


_GROUPED = st.lists(
    st.tuples(st.sampled_from([f"10.0.0.{n}" for n in range(6)]), st.sampled_from("ab")),
    max_size=8,
)


@given(before=_GROUPED, body=_GROUPED, group=st.sampled_from(["a", "b", None]))
def test_a_replace_makes_its_group_exactly_the_body_and_leaves_the_rest(
    before: list[tuple[str, str]], body: list[tuple[str, str]], group: str | None
) -> None:
    state = EmulatorState.from_specs([ChannelSpec(*KEY)], random.Random(0))
    channel = state.channel(KEY)
    if before:
        channel.upsert([(h, {"host": h, "member_group_name": g}) for h, g in before], 0.0)
    old = {m["host"]: dict(m) for m in channel}
    entries = [(h, {"host": h, "member_group_name": g}) for h, g in body]
    done = channel.replace(entries, 1.0, group)  # type: ignore[arg-type]
    taken: dict[str, str] = {}  # the first definition of each address in the group
    for host, name in body:
        if group in (None, name):
            taken.setdefault(host, name)
    assert [m["host"] for m in done.members] == list(taken)
    now = {m["host"]: m for m in channel}
    # The group (or, without one, the channel) is the body's first definitions...
    replaced = {h for h, m in now.items() if group is None or m["member_group_name"] == group}
    assert replaced == set(taken) and all(now[h]["member_group_name"] == taken[h] for h in taken)
    # ...the members of other groups stay as they were, and an address kept keeps its id.
    assert all(now[h] == m for h, m in old.items() if h not in taken and h in now)
    assert set(now) == set(taken) | {
        h for h, m in old.items() if group is not None and m["member_group_name"] != group
    }
    assert all(now[h]["id"] == old[h]["id"] for h in taken if h in old)


def test_auto_create_makes_only_channels_whose_ids_a_fixture_takes() -> None:
    state = EmulatorState(random.Random(0), auto_create=True)
    with pytest.raises(UnknownChannel):
        state.channel(("p", "i", "ch.1"))
    with pytest.raises(UnknownInstance):
        state.channel(("p", "i" * 65, "c"))
    state.channel(("p", "i", "ch-1"))
    assert [spec.vpc_channel_id for spec in parse_channels(state.to_json())] == ["ch-1"]


def test_state_lookup_errors_and_quota_leave_state_alone() -> None:
    state = EmulatorState.from_specs([ChannelSpec(*KEY, max_members=1)], random.Random(0))
    with pytest.raises(UnknownInstance):
        state.channel(("p", "x", "c"))
    with pytest.raises(UnknownChannel):
        state.channel(("p", "i", "x"))
    channel = state.channel(KEY)
    channel.upsert([("10.0.0.1", {"host": "10.0.0.1"})], now=0.0)
    with pytest.raises(QuotaExceeded):
        channel.upsert([("10.0.0.2", {"host": "10.0.0.2"})], now=0.0)
    assert [m["host"] for m in channel] == ["10.0.0.1"]
    assert channel.upsert([("10.0.0.1", {"host": "10.0.0.1", "weight": 3})], 0.0).updated == 1


def test_seeded_state_makes_the_same_ids() -> None:
    def ids() -> list[str]:
        channel = EmulatorState(random.Random(5), auto_create=True).channel(KEY)
        return [m["id"] for m in channel.upsert([("h", {"host": "h"})], 0.0).members]

    assert ids() == ids()


def test_token_bucket_admits_burst_then_paces_at_the_rate() -> None:
    throttle = Throttle(rate=2.0, burst=3.0)
    assert [throttle.take("p", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.take("p", 0.0) == pytest.approx(0.5)
    assert throttle.take("p", 0.25) == pytest.approx(0.25)
    assert throttle.take("p", 0.5) == 0.0
    assert throttle.take("other", 0.5) == 0.0
    assert throttle.take("p", 10.0) == 0.0  # refilled, but never past the burst
    assert [throttle.take("p", 10.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (1.0, 1), (1.01, 2), (4.5, 5)])
def test_retry_after_is_whole_seconds_and_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header


def test_fault_plan_is_reproducible_and_respects_precedence() -> None:
    rates = FaultRates(fail=0.3, fail_after_commit=0.3, reset=0.3, slow=0.5, slow_ms=100)
    first = [FaultPlan(rates, random.Random(9)).draw() for _ in range(1)]
    plan_a, plan_b = FaultPlan(rates, random.Random(9)), FaultPlan(rates, random.Random(9))
    draws = [plan_a.draw() for _ in range(200)]
    assert draws == [plan_b.draw() for _ in range(200)]
    assert draws[0] == first[0]
    assert {d.fault for d in draws} == {None, Fault.FAIL, Fault.RESET, Fault.FAIL_AFTER_COMMIT}
    assert {d.slow for d in draws} == {0.0, 0.1} and {d.latency for d in draws} == {0.0}
    everything = FaultPlan(FaultRates(fail=1, fail_after_commit=1, reset=1), random.Random(0))
    assert everything.draw().fault is Fault.FAIL
    assert FaultPlan(FaultRates(), random.Random(0)).draw().fault is None


def test_latency_and_jitter_stay_in_their_band() -> None:
    plan = FaultPlan(FaultRates(latency_ms=50, jitter_ms=20), random.Random(1))
    delays = [plan.draw().latency for _ in range(500)]
    assert min(delays) >= 0.030 and max(delays) <= 0.070
    assert max(delays) - min(delays) > 0.03


def test_channel_fixtures_are_checked() -> None:
    specs = parse_channels(
        {
            "channels": [
                {"project_id": "p", "instance_id": "i", "vpc_channel_id": "c", "max_members": 5}
            ]
        }
    )
    assert specs == (ChannelSpec("p", "i", "c", 80, 5),)
    for bad in (
        [],
        {"channels": {}},
        {"channels": [{"project_id": "p", "instance_id": "i"}]},
        {"channels": [{"project_id": "p/x", "instance_id": "i", "vpc_channel_id": "c"}]},
        {"channels": [{"project_id": "p", "instance_id": "i", "vpc_channel_id": "c", "port": 1e3}]},
        {
            "channels": [
                {"project_id": "p", "instance_id": "i", "vpc_channel_id": "c", "max_members": 0}
            ]
        },
    ):
        with pytest.raises(ValueError):
            parse_channels(bad)


@pytest.mark.parametrize(
    "settings_",
    [
        {"fail_rate": 1.5},
        {"rate": 0.0},
        {"burst": 5.0},
        {"rate": 1.0, "burst": 0.5},
        {"tokens": ()},
        {"aksk": (("AK", ""),)},
        {"aksk": (("", "SK"),)},
        {"token_ttl": 0.0},
        {"token_ttl": float("inf")},
        {"body_budget_mb": 11},
        {"port": 65536},
    ],
)
def test_config_refuses_nonsense(settings_: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**settings_)  # type: ignore[arg-type]


def test_burst_defaults_to_a_tenth_of_the_rate_but_at_least_one() -> None:
    assert EmulatorConfig(rate=50).effective_burst == 5
    assert EmulatorConfig(rate=3).effective_burst == 1
    assert EmulatorConfig().effective_burst is None


# --- paging ------------------------------------------------------------------------------------


@given(st.integers(-(10**18) + 1, 10**18 - 1), st.integers(-(10**18) + 1, 10**18 - 1))
def test_paging_clamps_every_whole_number(offset: int, limit: int) -> None:
    first, size = paging.window(str(offset), str(limit))
    assert first == max(0, offset)
    assert size == (20 if limit <= 0 else min(limit, 500))


@pytest.mark.parametrize(("offset", "limit"), [(None, None), ("", ""), (None, "0")])
def test_paging_defaults(offset: str | None, limit: str | None) -> None:
    assert paging.window(offset, limit) == (0, 20)


@pytest.mark.parametrize("text", ["x", "1.5", "1e3", " 1", "１", "-", "9" * 19])
def test_paging_refuses_what_is_not_a_whole_64_bit_number(text: str) -> None:
    for name, arguments in (("offset", (text, None)), ("limit", (None, text))):
        with pytest.raises(ApiError) as caught:
            paging.window(*arguments)
        assert (caught.value.status, caught.value.code) == (400, "APIG.2012")
        assert f"parameterName:{name}." in caught.value.message


# --- the body budget and the write guard -------------------------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=40))
def test_body_budget_never_counts_more_than_its_limit(steps: list[tuple[bool, int]]) -> None:
    budget = BodyBudget(100)
    taken: list[int] = []
    for take, size in steps:
        if take:
            fits = budget.held + size <= 100
            assert budget.take(size) is fits
            if fits:
                taken.append(size)
        elif taken:
            budget.give(taken.pop())
        assert budget.held == sum(taken) <= 100


def test_one_write_at_a_time_per_channel() -> None:
    writes = Writes()
    assert writes.begin(KEY) and writes.begin(("p", "i", "other"))
    assert not writes.begin(KEY)
    writes.end(KEY)
    assert writes.begin(KEY)


# --- IAM tokens ----------------------------------------------------------------------------------

USER = IamUser("acme", "ops", "pa:ss/word")


def login(password: str = "pa:ss/word", **auth: object) -> bytes:
    user = {"domain": {"name": "acme"}, "name": "ops", "password": password}
    identity = {"methods": ["password"], "password": {"user": user}}
    return orjson.dumps({"auth": {"identity": identity, **auth}})


def test_iam_users_parse_and_never_show_their_password() -> None:
    assert parse_iam_user("acme/ops:pa:ss/word") == USER
    assert "pa:ss" not in repr(USER)
    for bad in ("acme/ops", "ops:pw", "/ops:pw", "acme/:pw", "acme/ops:"):
        with pytest.raises(ValueError) as caught:
            parse_iam_user(bad)
        assert "pw" not in str(caught.value)


def test_aksk_pairs_parse_and_secrets_stay_out_of_the_config_repr() -> None:
    assert parse_aksk("AK1:s:k") == ("AK1", "s:k")
    with pytest.raises(ValueError, match="AK:SK") as caught:
        parse_aksk("AK1secret")
    assert "secret" not in str(caught.value)
    config = EmulatorConfig(tokens=("tok-secret",), aksk=(("AK1", "sk-secret"),), iam_users=(USER,))
    assert "secret" not in repr(config) and "pa:ss" not in repr(config)


def test_tokens_are_issued_to_users_and_expire_after_their_lifetime() -> None:
    tokens = Tokens([USER], ttl=60.5, rng=random.Random(1))
    issued = tokens.issue(login(scope={"project": {"name": "cn-north-4"}}), now=1_000.0)
    assert isinstance(issued, Issued)
    assert issued.token not in repr(issued)
    details = issued.body["token"]
    assert details == {  # type: ignore[comparison-overlap]
        "methods": ["password"],
        "expires_at": "1970-01-01T00:17:40.500000Z",
        "issued_at": "1970-01-01T00:16:40.000000Z",
        "user": {"domain": {"name": "acme"}, "name": "ops"},
        "project": {"name": "cn-north-4"},
    }
    assert tokens.check(issued.token, 1_060.4) is TokenState.VALID
    assert tokens.check(issued.token, 1_060.5) is TokenState.EXPIRED
    assert tokens.check("MIIforged", 1_000.0) is TokenState.UNKNOWN
    # A new token does not revoke the old one.
    again = tokens.issue(login(), now=1_001.0)
    assert isinstance(again, Issued) and again.token != issued.token
    assert tokens.check(issued.token, 1_002.0) is TokenState.VALID


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (login(password="wrong"), IamError(401, "The username or password is wrong.")),
        (login().replace(b'"ops"', b'"dev"'), IamError(401, "The username or password is wrong.")),
        (
            login().replace(b'"password"]', b'"token"]'),
            IamError(400, "The request body is invalid."),
        ),
        (b"{not json", IamError(400, "The request body is invalid.")),
        (
            b'{"auth": {"identity": {"methods": ["password"]}}}',
            IamError(400, "The request body is invalid."),
        ),
    ],
)
def test_a_bad_login_gets_iams_own_error_body(body: bytes, answer: IamError) -> None:
    outcome = Tokens([USER], ttl=60, rng=random.Random(1)).issue(body, now=0.0)
    assert outcome == answer
    title = {400: "Bad Request", 401: "Unauthorized"}[answer.status]
    assert outcome.body() == {
        "error": {"code": answer.status, "message": answer.message, "title": title}
    }


def test_tokens_held_are_bounded() -> None:
    tokens = Tokens([USER], ttl=10.0, rng=random.Random(2))
    first = tokens.issue(login(), now=0.0)
    assert isinstance(first, Issued)
    for _ in range(MAX_LIVE_TOKENS):
        tokens.issue(login(), now=1.0)
    assert tokens.check(first.token, 1.0) is TokenState.UNKNOWN  # the oldest went first
    assert len(tokens._expiry) == MAX_LIVE_TOKENS
    tokens.issue(login(), now=20.0)  # and every expired one goes at the next login
    assert len(tokens._expiry) == 1


# --- error answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "limit"), [(200.0, "200"), (0.5, "0.5"), (1e6, "1000000"), (12.25, "12.25")]
)
def test_throttled_names_its_window_as_the_service_writes_it(rate: float, limit: str) -> None:
    answer = errors.throttled(rate, 2)
    assert answer.message == (
        "The throttling threshold has been reached: policy user over ratelimit,"
        f"limit:{limit},time:1 second"
    )
    assert (answer.status, answer.code, answer.headers) == (
        429,
        "APIG.0308",
        (("Retry-After", "2"),),
    )


def test_error_bodies_carry_the_request_id() -> None:
    assert errors.system_error().body("ab" * 16) == {
        "error_code": "APIG.9999",
        "error_msg": "System error",
        "request_id": "ab" * 16,
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("apig.example.com", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
