"""The emulator's pure parts: body rules against check_member, state, throttle, faults, config."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.emulator.body import BodyReader
from worker.emulator.config import ChannelSpec, EmulatorConfig, parse_channels
from worker.emulator.errors import ApiError, for_problem
from worker.emulator.faults import Fault, FaultPlan, FaultRates, Throttle, retry_after
from worker.emulator.state import EmulatorState, QuotaExceeded, UnknownChannel, UnknownInstance
from worker.members import MEMBER_FIELDS, Member, canonical_address, check_member

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
    assert {d.fault for d in draws} == {None, *Fault} - {Fault.SLOW}
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
    ],
)
def test_config_refuses_nonsense(settings_: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**settings_)  # type: ignore[arg-type]


def test_burst_defaults_to_a_tenth_of_the_rate_but_at_least_one() -> None:
    assert EmulatorConfig(rate=50).effective_burst == 5
    assert EmulatorConfig(rate=3).effective_burst == 1
    assert EmulatorConfig().effective_burst is None
