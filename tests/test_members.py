"""The member model: validation never raises, and equal addresses compare equal."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import members
from worker.members import (
    INT_RANGES,
    MEMBER_FIELDS,
    Channel,
    FieldError,
    Member,
    Problem,
    canonical_address,
    canonical_host,
    channel_from_fields,
    check_id,
    member_from_fields,
)

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
LOOSE_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
FIELD_NAMES = st.sampled_from(MEMBER_FIELDS) | st.text(max_size=8)


@given(st.dictionaries(FIELD_NAMES, LOOSE_VALUES))
def test_member_from_fields_never_raises(fields: dict[str, object]) -> None:
    result = member_from_fields(fields)
    assert isinstance(result, Member | FieldError)
    if isinstance(result, FieldError):
        assert result.field in MEMBER_FIELDS


CELLS = st.sampled_from(["", " ", "0", " 7 ", "65535", "65536", "-1", "1", "2", "true", "No",
                         "grp", " grp ", "grp/1", "x" * 65, "10.0.0.1", "1e3"])  # fmt: skip


@given(st.lists(st.dictionaries(st.sampled_from(MEMBER_FIELDS), CELLS), min_size=1, max_size=6))
def test_remembered_cells_give_what_parsing_gives(rows: list[dict[str, object]]) -> None:
    # Cells of few-valued fields are parsed once and remembered: whatever was seen before,
    # and in whatever order, each row must come out as it would on its own.
    warm = [member_from_fields(row) for row in rows]
    assert warm == [_parsed_afresh(row) for row in rows]


def _parsed_afresh(row: dict[str, object]) -> Member | FieldError:
    for *_, seen in members._PARSERS:
        if seen is not None:
            seen.clear()
    return member_from_fields(row)


@given(st.sampled_from(sorted(INT_RANGES)), st.data())
def test_int_in_range_is_taken_as_text_or_number(name: str, data: st.DataObject) -> None:
    low, high = INT_RANGES[name]
    value = data.draw(st.integers(low, high))
    spelled = data.draw(st.sampled_from([value, str(value), f"  {value}\t", f"+{value}"]))
    member = member_from_fields({"host": "10.0.0.1", name: spelled})
    assert isinstance(member, Member)
    assert getattr(member, name) == value


@given(st.sampled_from(sorted(INT_RANGES)), st.data())
def test_int_out_of_range_is_refused_naming_the_field(name: str, data: st.DataObject) -> None:
    low, high = INT_RANGES[name]
    value = data.draw(st.integers(max_value=low - 1) | st.integers(min_value=high + 1))
    spelled = data.draw(st.sampled_from([value, str(value)]))
    error = member_from_fields({"host": "10.0.0.1", name: spelled})
    assert isinstance(error, FieldError)
    assert (error.field, error.problem) == (name, Problem.RANGE)


def test_an_absurdly_long_number_is_out_of_range_not_a_crash() -> None:
    # int() refuses strings over 4300 digits by raising ValueError.
    error = member_from_fields({"host": "10.0.0.1", "weight": "9" * 5000})
    assert isinstance(error, FieldError)
    assert (error.field, error.problem) == ("weight", Problem.RANGE)


def _spellings(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    forms = [str(address), address.exploded, address.compressed, address.exploded.upper()]
    if address.version == 6:
        forms += [f"[{address.compressed}]", f" {address.compressed.upper()} "]
    return forms


@given(st.ip_addresses())
def test_ip_notations_share_one_canonical_form(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    canonical = {canonical_host(form) for form in _spellings(address)}
    assert canonical == {str(address)}
    assert canonical_host(str(address)) == str(address)


LABEL = st.from_regex(r"[a-z0-9_](?:[a-z0-9_\-]{0,10}[a-z0-9_])?", fullmatch=True)
HOST_NAME = (
    st.lists(LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not all(label.isdigit() for label in name.split(".")))
)


@given(HOST_NAME, st.data())
def test_host_names_ignore_case_and_a_trailing_dot(name: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    mixed = "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))
    assert canonical_host(mixed) == canonical_host(mixed + ".") == name
    assert canonical_host(name) == name


@given(st.text(max_size=80))
def test_canonical_host_is_idempotent(text: str) -> None:
    once = canonical_host(text)
    if once is not None:
        assert canonical_host(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "[]",
        "010.0.0.1",
        "1.2.3.256",
        "1.2.3",
        "a..b",
        "-a.com",
        "a_b-.com",
        "a b",
        "é.com",
    ],
)
def test_malformed_hosts(text: str) -> None:
    assert canonical_host(text) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"host": " WEB-1.Example.COM. "}, Member(host="web-1.example.com")),
        ({"host": "2001:DB8:0:0::1", "port": 80}, Member(host="2001:db8::1", port=80)),
        (
            {"ecs_id": " abc-123_X ", "ecs_name": "节点.1"},
            Member(ecs_id="abc-123_X", ecs_name="节点.1"),
        ),
        ({"host": "10.0.0.1", "port": "", "weight": None}, Member(host="10.0.0.1")),
        ({"host": "10.0.0.1", "weight": "-0"}, Member(host="10.0.0.1", weight=0)),
        ({"host": "10.0.0.1", "is_backup": "YES"}, Member(host="10.0.0.1", is_backup=True)),
        ({"host": "10.0.0.1", "is_backup": 0}, Member(host="10.0.0.1", is_backup=False)),
    ],
)
def test_valid_members(fields: dict[str, object], expected: Member) -> None:
    assert member_from_fields(fields) == expected


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({}, "host", Problem.MISSING),
        ({"host": "  ", "ecs_id": ""}, "host", Problem.MISSING),
        ({"host": "10.0.0.1", "port": "80.0"}, "port", Problem.TYPE),
        ({"host": "10.0.0.1", "port": 80.0}, "port", Problem.TYPE),
        ({"host": "10.0.0.1", "port": True}, "port", Problem.TYPE),
        ({"host": "10.0.0.1", "port": "eighty"}, "port", Problem.TYPE),
        ({"host": "10.0.0.1", "weight": "١٢"}, "weight", Problem.TYPE),
        ({"host": "10.0.0.1", "status": 3}, "status", Problem.RANGE),
        ({"host": "10.0.0.1", "is_backup": "maybe"}, "is_backup", Problem.TYPE),
        ({"host": "10.0.0.1", "is_backup": 2}, "is_backup", Problem.TYPE),
        ({"host": "10.0.0.1", "is_backup": 1.0}, "is_backup", Problem.TYPE),
        ({"host": ["10.0.0.1"]}, "host", Problem.TYPE),
        ({"host": "10.0.0.300"}, "host", Problem.MALFORMED),
        ({"host": "a" * 65}, "host", Problem.TOO_LONG),
        ({"ecs_id": "x" * 256}, "ecs_id", Problem.TOO_LONG),
        ({"ecs_id": "id/../../x"}, "ecs_id", Problem.MALFORMED),
        ({"host": "10.0.0.1", "ecs_name": "a b"}, "ecs_name", Problem.MALFORMED),
        ({"host": "10.0.0.1", "member_group_name": {"a": 1}}, "member_group_name", Problem.TYPE),
    ],
)
def test_refused_members(fields: dict[str, object], field: str, problem: Problem) -> None:
    error = member_from_fields(fields)
    assert isinstance(error, FieldError)
    assert (error.field, error.problem) == (field, problem)
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("host", "ecs_id", "expected"),
    [
        ("2001:DB8::1", "ignored", "2001:db8::1"),
        ("  ", " ecs-1 ", "ecs-1"),
        (None, "ecs-1", "ecs-1"),
        (None, None, None),
        ("not a host", None, None),
    ],
)
def test_canonical_address(host: str | None, ecs_id: str | None, expected: str | None) -> None:
    assert canonical_address(host, ecs_id) == expected


def test_to_json_leaves_out_what_was_not_given() -> None:
    member = Member(host="10.0.0.1", weight=0, is_backup=False)
    assert member.to_json() == {"host": "10.0.0.1", "weight": 0, "is_backup": False}
    assert member.address == "10.0.0.1"
    assert Member(ecs_id="e1").address == "e1"


@given(st.lists(st.none() | st.integers() | st.booleans() | st.text(max_size=3),
                min_size=len(MEMBER_FIELDS), max_size=len(MEMBER_FIELDS)))  # fmt: skip
def test_to_json_names_every_given_field_in_field_order(values: list[object]) -> None:
    member = Member(*values)  # type: ignore[arg-type]
    expected = [
        (n, v) for n, v in zip(MEMBER_FIELDS, member.values(), strict=True) if v is not None
    ]
    assert list(member.to_json().items()) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, Problem.MISSING),
        ("", Problem.MISSING),
        ("a/b", Problem.MALFORMED),
        ("..", Problem.MALFORMED),
        ("x" * 65, Problem.MALFORMED),
        ("Ab-1_2", None),
    ],
)
def test_check_id(value: str | None, problem: Problem | None) -> None:
    error = check_id("instance_id", value)
    assert (error.problem if error else None) == problem


def test_channel_defaults_fill_absent_and_empty_ids() -> None:
    defaults = {"project_id": "p", "instance_id": "i", "vpc_channel_id": "c"}
    assert channel_from_fields({"instance_id": " i2 ", "vpc_channel_id": ""}, defaults) == Channel(
        "p", "i2", "c"
    )
    error = channel_from_fields({"project_id": 7}, defaults)
    assert isinstance(error, FieldError)
    assert (error.field, error.problem) == ("project_id", Problem.TYPE)
    missing = channel_from_fields({"project_id": "p"}, {})
    assert isinstance(missing, FieldError)
    assert (missing.field, missing.problem) == ("instance_id", Problem.MISSING)
