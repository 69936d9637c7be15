"""The member model: validation never raises, and equal addresses compare equal."""

from __future__ import annotations

import ipaddress

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import members
from worker.emulator.body import BodyReader
from worker.emulator.errors import ApiError, for_problem
from worker.members import (
    INT_RANGES,
    MEMBER_FIELDS,
    USABLE_IPV4,
    Channel,
    FieldError,
    Member,
    Problem,
    canonical_address,
    canonical_host,
    channel_from_fields,
    check_id,
    member_from_fields,
    parse_host,
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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The edges of the ranges no backend can have, which hypothesis's own special ranges
# leave out (multicast) or rarely reach.
EDGES_V4 = [
    "0.0.0.0/30", "1.0.0.0/30", "126.255.255.252/30", "127.0.0.0/24", "128.0.0.0/30",
    "169.253.255.252/30", "169.254.0.0/24", "169.255.0.0/30", "223.255.255.252/30",
    "224.0.0.0/24", "239.255.255.252/30", "240.0.0.0/30", "255.255.255.252/30",
]  # fmt: skip
EDGES_V6 = [
    "::/126", "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126", "fe80::/120", "febf::/120",
    "fec0::/126", "feff::/120", "ff00::/120", "ff02::/120", "::ffff:0:0/120",
    "::ffff:127.0.0.0/120", "::ffff:224.0.0.0/120",
]  # fmt: skip


def _near_edges(networks: list[str]) -> st.SearchStrategy[IPAddress]:
    return st.sampled_from(networks).flatmap(lambda network: st.ip_addresses(network=network))


ADDRESSES = st.ip_addresses() | _near_edges(EDGES_V4 + EDGES_V6)


def _spellings(address: IPAddress) -> list[str]:
    forms = [str(address), address.exploded, address.compressed, address.exploded.upper()]
    if address.version == 6:
        forms += [f"[{address.compressed}]", f" {address.compressed.upper()} "]
    else:
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        forms += [f"::ffff:{address}", f"[::FFFF:{address}]", mapped.exploded, str(mapped)]
    return forms


def _outcome(result: str | FieldError) -> object:
    return (result.problem, result.reason) if isinstance(result, FieldError) else result


@given(ADDRESSES)
def test_every_notation_of_an_address_has_one_fate(address: IPAddress) -> None:
    # An IPv4 address and its mapped IPv6 forms are one address: the same canonical
    # text, or refused with the same reason.
    fates = {_outcome(parse_host(form)) for form in _spellings(address)}
    assert len(fates) == 1, fates
    (fate,) = fates
    if isinstance(fate, str):
        mapped = address.ipv4_mapped if address.version == 6 else None
        assert fate == str(mapped or address)
        assert parse_host(fate) == fate
    else:
        problem, reason = fate  # type: ignore[misc]
        assert problem is Problem.UNUSABLE
        assert reason.endswith("cannot be a backend")


@given(st.ip_addresses(v=4) | _near_edges(EDGES_V4))
def test_the_ipv4_fast_path_takes_exactly_the_usable_addresses(
    address: ipaddress.IPv4Address,
) -> None:
    assert (USABLE_IPV4.fullmatch(str(address)) is not None) == (
        parse_host(str(address)) == str(address)
    )


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("0.0.0.0", "0.0.0.0 is the unspecified address and cannot be a backend"),
        ("::", ":: is the unspecified address"),
        ("0.1.2.3", '0.1.2.3 is in 0.0.0.0/8 ("this network"'),
        ("255.255.255.255", "255.255.255.255 is the limited broadcast address"),
        ("224.0.0.1", "224.0.0.1 is a multicast address (224.0.0.0/4)"),
        ("239.255.255.255", "a multicast address"),
        ("ff02::1", "ff02::1 is a multicast address (ff00::/8)"),
        ("127.0.0.1", "127.0.0.1 is a loopback address (127.0.0.0/8)"),
        ("127.255.255.254", "a loopback address"),
        ("::1", "::1 is the loopback address"),
        ("[::1]", "::1 is the loopback address"),
        ("::ffff:127.0.0.1", "127.0.0.1 is a loopback address"),
        ("169.254.169.254", "169.254.169.254 is a link-local address (169.254.0.0/16)"),
        ("fe80::1", "fe80::1 is a link-local address (fe80::/10)"),
        ("febf::1", "a link-local address"),
        ("240.0.0.1", "240.0.0.1 is in the reserved range 240.0.0.0/4"),
        ("254.255.255.255", "in the reserved range"),
    ],
)
def test_addresses_no_backend_can_have(host: str, reason: str) -> None:
    error = parse_host(host)
    assert isinstance(error, FieldError)
    assert (error.field, error.problem) == ("host", Problem.UNUSABLE)
    assert reason in error.reason
    assert error.reason.endswith("and cannot be a backend")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("fe80::1%eth0", "'fe80::1%eth0' has a zone id (%eth0)"),
        ("[2001:db8::1%2]", "has a zone id (%2)"),
        ("::ffff:10.0.0.1%eth0", "has a zone id (%eth0)"),
        ("0x0a.0.0.1", "'0x0a.0.0.1' is an IPv4 address with a part in hexadecimal (0x0a)"),
        ("0X0A.0.0.1", "in hexadecimal (0X0A)"),
        ("0x0a000001", "in hexadecimal (0x0a000001)"),
        ("10.0.0.0x1", "in hexadecimal (0x1)"),
        ("010.0.0.1", "'010.0.0.1' is an IPv4 address with a leading zero (010)"),
        ("10.0.0.01", "with a leading zero (01)"),
        ("10.1", "'10.1' is an IPv4 address in short form (2 parts, not four)"),
        ("10.0.1", "in short form (3 parts, not four)"),
        ("167772161", "'167772161' is an IPv4 address written as one number"),
        ("1.2.3.4.5", "'1.2.3.4.5' has 5 parts, and an IPv4 address has four"),
        ("1.2.3.256", "'1.2.3.256' is not an IPv4 address: 256 is over 255"),
        ("10.0.0.1.", "'10.0.0.1.' is an IPv4 address with a trailing dot"),
        ("web.1", "'web.1' ends in a number, so it can only be an IPv4 address, but 'web' is"),
        ("example.0x", "so it can only be an IPv4 address"),
        ("1..2.3", "but it has an empty label"),
        ("[example.com]", "not an IP address or host name: '[example.com]'"),
        ("10.0.0.1%eth0", "not an IP address or host name"),
    ],
)
def test_notations_that_mean_different_things_to_different_tools(host: str, reason: str) -> None:
    error = parse_host(host)
    assert isinstance(error, FieldError)
    assert (error.field, error.problem) == ("host", Problem.MALFORMED)
    assert reason in error.reason


LABEL = st.from_regex(r"[a-z0-9_](?:[a-z0-9_\-]{0,10}[a-z0-9_])?", fullmatch=True)
# A name whose last label is a number is an IPv4 address (the URL standard's rule).
HOST_NAME = (
    st.lists(LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: members._NUMBER_LABEL.fullmatch(name.rpartition(".")[2]) is None)
)


@given(HOST_NAME, st.data())
def test_host_names_ignore_case_and_a_trailing_dot(name: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    mixed = "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))
    assert canonical_host(mixed) == canonical_host(mixed + ".") == name
    assert canonical_host(name) == name


NUMBER = st.integers(0, 2**32).flatmap(
    lambda n: st.sampled_from([str(n), f"0{n:o}", f"0x{n:x}", f"0X{n:X}", f"{n:03d}"])
)
# Hosts whose last label is a number, so the URL standard reads them as IPv4.
IPV4_ATTEMPTS = st.builds(
    lambda head, last, dot: ".".join([*head, last]) + dot,
    st.lists(NUMBER | st.sampled_from(["", "a", "web", "0x", "1e3"]), max_size=4),
    NUMBER,
    st.sampled_from(["", "."]),
)
HOSTS = (
    ADDRESSES.flatmap(lambda address: st.sampled_from(_spellings(address)))
    | IPV4_ATTEMPTS
    | HOST_NAME
    | st.text(max_size=70)
)


@given(HOSTS)
def test_a_canonical_host_is_a_fixed_point(text: str) -> None:
    once = parse_host(text)
    if isinstance(once, str):
        assert parse_host(once) == once


@given(IPV4_ATTEMPTS)
def test_a_host_ending_in_a_number_is_a_canonical_dotted_quad_or_refused(text: str) -> None:
    host = parse_host(text)
    if isinstance(host, str):
        assert host == text
        assert str(ipaddress.IPv4Address(host)) == host
    else:
        assert host.problem in (Problem.MALFORMED, Problem.UNUSABLE)


def _emulator_answer(host: str) -> tuple[str, str]:
    try:
        ((address, _),) = BodyReader().parse(orjson.dumps({"members": [{"host": host}]}))
    except ApiError as error:
        return "refused", error.code
    return "accepted", address


@given(HOSTS.filter(lambda text: text == text.strip()))
def test_the_worker_and_the_emulator_agree_on_every_host(text: str) -> None:
    # The worker validates the inventory's cell; the emulator the request body. Whatever
    # one refuses the other refuses with the code that problem maps to, and what one
    # accepts the other accepts as the same address, both as written and as sent.
    member = member_from_fields({"host": text})
    if isinstance(member, FieldError):
        assert _emulator_answer(text) == ("refused", for_problem("host", member.problem).code)
    else:
        assert _emulator_answer(text) == ("accepted", member.address)
        assert member.host is not None
        assert _emulator_answer(member.host) == ("accepted", member.address)


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
        ({"host": " [::FFFF:10.0.0.1] "}, Member(host="10.0.0.1")),
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
        ({"host": " 127.0.0.1 "}, "host", Problem.UNUSABLE),
        ({"host": "::ffff:0.0.0.0"}, "host", Problem.UNUSABLE),
        ({"host": "0x0a.0.0.1"}, "host", Problem.MALFORMED),
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
        ("2001:DB8::1", None, "2001:db8::1"),
        # An ECS member's host is the service's to fill in: its ECS id is its key.
        ("192.168.0.17", " ecs-1 ", "ecs-1"),
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
