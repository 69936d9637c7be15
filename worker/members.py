"""The member model: its fields, the API's limits on them, and canonical addresses.

The worker validates inventory rows with these rules before it sends anything, and the
emulator validates request bodies with the same rules, so the two can never disagree
about what the service accepts. Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple, cast

MEMBER_FIELDS: Final = (
    "host",
    "port",
    "weight",
    "is_backup",
    "member_group_name",
    "status",
    "ecs_id",
    "ecs_name",
)
CHANNEL_FIELDS: Final = ("project_id", "instance_id", "vpc_channel_id")
# The fields of an ECS member (an IP member has neither).
ECS_FIELDS: Final = ("ecs_id", "ecs_name")

INT_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "port": (0, 65535),
    "weight": (0, 10000),
    "status": (1, 2),
}
BOOL_FIELDS: Final = frozenset({"is_backup"})
# The gateway's limit on one request body (413 beyond), and the most members one list
# request may ask for (the service clamps larger limits to it).
MAX_BODY_BYTES: Final = 12 * 1024 * 1024
PAGE_LIMIT: Final = 500
# The JSON type each member field's value has, as the API takes it.
JSON_TYPES: Final[Mapping[str, type]] = {
    name: int if name in INT_RANGES else bool if name in BOOL_FIELDS else str
    for name in MEMBER_FIELDS
}
# The member fields whose values repeat across an inventory (a port, a group name; not an
# address or an ECS id), in MEMBER_FIELDS order: each distinct value is judged once.
FEW_VALUED: Final = tuple(
    name for name in MEMBER_FIELDS if name != "host" and name not in ECS_FIELDS
)
STR_MAX: Final[Mapping[str, int]] = {
    "host": 64,
    "member_group_name": 64,
    # The page's prose says 64 but its schema says 255; the schema is what the service enforces.
    "ecs_id": 255,
    "ecs_name": 64,
}

# \w matches letters of every script (the API allows CJK names) plus digits and underscore.
_NAME_RE: Final = re.compile(r"[\w.\-]+")
_ECS_ID_RE: Final = re.compile(r"[A-Za-z0-9_\-]+")
_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?"
_NAME_HOST_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# A dotted quad that matches is valid, canonical and usable as it stands: octets without
# leading zeros, a first octet of 1-223 but not 127, and not 169.254/16 (the ranges of
# _UNUSABLE). Most inventories are made of these, and matching one is far cheaper than
# building an ipaddress object. The emulator's body reader takes its fast path on it too.
# Made of two parts, so that engines without lookahead (Arrow's RE2, in worker.fastlane)
# run the same rule: the dotted quad, and the prefixes it must not start with.
USABLE_IPV4_QUAD: Final = rf"(?:22[0-3]|2[01][0-9]|1[0-9][0-9]|[1-9][0-9]?)(?:\.{_OCTET}){{3}}"
UNUSABLE_IPV4_PREFIXES: Final = ("127.", "169.254.")
USABLE_IPV4: Final = re.compile(
    rf"(?!{'|'.join(map(re.escape, UNUSABLE_IPV4_PREFIXES))}){USABLE_IPV4_QUAD}"
)
# The URL standard reads a host whose last label is a number (decimal or 0x-hex) as an
# IPv4 address, in whatever notation; such a host is never a DNS name.
_NUMBER_LABEL: Final = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
# Identifiers end up in the URL path, so nothing that could alter the path gets through.
_ID_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_WHOLE_RE: Final = re.compile(r"[+-]?[0-9]+")
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


class Problem(StrEnum):
    """Why a field was refused; each side maps it to its own error code."""

    MISSING = "missing"
    TYPE = "type"
    RANGE = "range"
    TOO_LONG = "too_long"
    MALFORMED = "malformed"
    # Well formed, but an address no backend can have (loopback, multicast, ...).
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One refused field: which, why (machine name), and a sentence for a person."""

    field: str
    problem: Problem
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


@dataclass(slots=True)
class Member:
    """A backend member as the API takes it. ``None`` means "not given".

    Treated as immutable; not frozen because one is built per input row, and a frozen
    dataclass costs several times as much to build."""

    host: str | None = None
    port: int | None = None
    weight: int | None = None
    is_backup: bool | None = None
    member_group_name: str | None = None
    status: int | None = None
    ecs_id: str | None = None
    ecs_name: str | None = None

    @property
    def address(self) -> str:
        """The key the service upserts by: the ECS id of an ECS member (one with an
        ``ecs_id``, whose host the service fills in with the server's address), else the
        host.

        Canonical for members built by :func:`member_from_fields`; for raw request bodies
        use :func:`canonical_address`.
        """
        return member_key(self.host, self.ecs_id)

    def values(self) -> tuple[object, ...]:
        """The field values in ``MEMBER_FIELDS`` order (None where not given)."""
        return (
            self.host, self.port, self.weight, self.is_backup,
            self.member_group_name, self.status, self.ecs_id, self.ecs_name,
        )  # fmt: skip

    def to_json(self) -> dict[str, object]:
        """The MemberInfo body for this member, leaving out what was not given."""
        # Spelled out field by field, in MEMBER_FIELDS order: this runs once per input row,
        # and a loop over zip(MEMBER_FIELDS, values()) costs four times as much (0.87 µs).
        body: dict[str, object] = {}
        if self.host is not None:
            body["host"] = self.host
        if self.port is not None:
            body["port"] = self.port
        if self.weight is not None:
            body["weight"] = self.weight
        if self.is_backup is not None:
            body["is_backup"] = self.is_backup
        if self.member_group_name is not None:
            body["member_group_name"] = self.member_group_name
        if self.status is not None:
            body["status"] = self.status
        if self.ecs_id is not None:
            body["ecs_id"] = self.ecs_id
        if self.ecs_name is not None:
            body["ecs_name"] = self.ecs_name
        return body


def parse_host(text: str) -> str | FieldError:
    """The canonical form of a host (IP literal or DNS name), or why it cannot be a backend.

    IP literals take their canonical text (``2001:DB8:0::1`` becomes ``2001:db8::1``,
    brackets dropped, IPv4-mapped IPv6 becomes its IPv4 address); names are lower-cased
    without a trailing dot. Refused: anything that ends in a number but is not a canonical
    dotted quad (``010.0.0.1``, ``0x0a.0.0.1``, ``10.1``, ``167772161``), zone ids, and
    addresses no backend can have (unspecified, broadcast, loopback, link-local, multicast,
    reserved).
    """
    text = text.strip()
    if USABLE_IPV4.fullmatch(text):
        return text
    bracketed = text.startswith("[") and text.endswith("]")
    literal = text[1:-1] if bracketed else text
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        return _malformed(text) if bracketed else _host_name(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return FieldError(
                "host",
                Problem.MALFORMED,
                f"{_show(text)} has a zone id (%{address.scope_id}), which means nothing "
                "outside the machine that wrote it",
            )
        address = address.ipv4_mapped or address
    value = int(address)
    for first, last, what in _UNUSABLE[address.version]:
        if first <= value <= last:
            return FieldError(
                "host", Problem.UNUSABLE, f"{address} is {what} and cannot be a backend"
            )
    return str(address)


def canonical_host(text: str) -> str | None:
    """The canonical form of a host, or None when :func:`parse_host` refuses it."""
    host = parse_host(text)
    return host if isinstance(host, str) else None


def _host_name(text: str) -> str | FieldError:
    if not text.isascii():
        return _malformed(text)
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if _NUMBER_LABEL.fullmatch(name.rpartition(".")[2]):
        return FieldError("host", Problem.MALFORMED, _ipv4_notation(text))
    if len(name) > 253 or _NAME_HOST_RE.fullmatch(name) is None:
        return _malformed(text)
    return name


def _malformed(text: str) -> FieldError:
    return FieldError("host", Problem.MALFORMED, f"not an IP address or host name: {_show(text)}")


def _ipv4_notation(text: str) -> str:
    """Why ``text``, an IPv4 address by the URL standard, is not in the one notation
    taken: four decimal numbers 0-255 without leading zeros. Tools disagree on the others
    (``010`` is 8 to inet_aton and 10 to many parsers), so none is guessed at."""
    shown = _show(text)
    parts = text.removesuffix(".").split(".")
    words = [part for part in parts if not _NUMBER_LABEL.fullmatch(part)]
    if words:
        what = "it has an empty label" if "" in words else f"{_show(words[0])} is not a number"
        return f"{shown} ends in a number, so it can only be an IPv4 address, but {what}"
    hexadecimal = [part for part in parts if part[:2] in ("0x", "0X")]
    if hexadecimal:
        return f"{shown} is an IPv4 address with a part in hexadecimal ({hexadecimal[0]})"
    if len(parts) == 1:
        return f"{shown} is an IPv4 address written as one number, not as four"
    if len(parts) < 4:
        return f"{shown} is an IPv4 address in short form ({len(parts)} parts, not four)"
    if len(parts) > 4:
        return f"{shown} has {len(parts)} parts, and an IPv4 address has four"
    for part in parts:
        if len(part) > 1 and part[0] == "0":
            return (
                f"{shown} is an IPv4 address with a leading zero ({part}), which some read as octal"
            )
        if int(part) > 255:
            return f"{shown} is not an IPv4 address: {part} is over 255"
    return f"{shown} is an IPv4 address with a trailing dot"


def _ranges(*ranges: tuple[str, str]) -> tuple[tuple[int, int, str], ...]:
    networks = [(ipaddress.ip_network(network), what) for network, what in ranges]
    return tuple((int(n.network_address), int(n.broadcast_address), what) for n, what in networks)


# Checked in order, so a single address is named before the range around it.
_UNUSABLE: Final = {
    4: _ranges(
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", 'in 0.0.0.0/8 ("this network", a source only)'),
        ("255.255.255.255/32", "the limited broadcast address"),
        ("127.0.0.0/8", "a loopback address (127.0.0.0/8)"),
        ("169.254.0.0/16", "a link-local address (169.254.0.0/16)"),
        ("224.0.0.0/4", "a multicast address (224.0.0.0/4)"),
        ("240.0.0.0/4", "in the reserved range 240.0.0.0/4"),
    ),
    6: _ranges(
        ("::/128", "the unspecified address"),
        ("::1/128", "the loopback address"),
        ("fe80::/10", "a link-local address (fe80::/10)"),
        ("ff00::/8", "a multicast address (ff00::/8)"),
    ),
}


def member_key(host: str | None, ecs_id: str | None) -> str:
    """The address of a member whose host is canonical and ECS id stripped already: the
    ECS id of an ECS member, else the host."""
    return ecs_id or host or ""


def canonical_address(host: str | None, ecs_id: str | None) -> str | None:
    """The address of a member: the stripped ECS id of an ECS member (one with an
    ``ecs_id``: the service fills in its host, so the host of a listed one is not what the
    inventory gave), else its canonical host."""
    if ecs_id is not None and ecs_id.strip():
        return ecs_id.strip()
    if host is not None and host.strip():
        return canonical_host(host)
    return None


def check_member(member: Member) -> FieldError | None:
    """Check a typed member against the API's limits; the first problem found, or None.

    The same per-field rules as :func:`member_from_fields`, applied to values that are
    already typed; a host must also already be trimmed.
    """
    values = member.values()
    problem = _kind_problem(values)
    if problem is not None:
        return problem
    for (index, name, parse, _), value in zip(_PARSERS, values, strict=True):
        if value is None:
            continue
        if index == _HOST and value != value.strip():  # type: ignore[attr-defined]
            return FieldError(name, Problem.MALFORMED, f"not trimmed: {_show(value)}")
        checked = parse(name, value)
        if type(checked) is FieldError:
            return checked
    return None


def check_field(name: str, value: object) -> FieldError | None:
    """One typed member field by its rule in :func:`check_member`, alone (a PUT's
    ``member_group_name``, which names the group it replaces)."""
    checked = _PARSERS[MEMBER_FIELDS.index(name)][2](name, value)
    return checked if type(checked) is FieldError else None


def _string_ok(name: str, value: str) -> bool:
    if name == "ecs_id":
        return _ECS_ID_RE.fullmatch(value) is not None
    return _NAME_RE.fullmatch(value) is not None


def check_id(name: str, value: str | None) -> FieldError | None:
    """Check a project, instance or channel id, which becomes a segment of the URL path."""
    if value is None or not value:
        return FieldError(name, Problem.MISSING, "is required")
    if _ID_RE.fullmatch(value) is None:
        return FieldError(
            name, Problem.MALFORMED, f"must be 1-64 letters, digits, '-' or '_', got {_show(value)}"
        )
    return None


def member_from_fields(fields: Mapping[str, object]) -> Member | FieldError:
    """Build a member from loosely typed inventory values (CSV text or NDJSON scalars).

    Empty strings and None are absent values; text is stripped; integers must be whole
    numbers; booleans take true/false/1/0/yes/no in any case. The host is canonicalised,
    so the member is ready to send and its ``address`` is comparable. Each value is typed
    and checked in one pass (this runs once per input row): the first bad field, in field
    order, is the one reported.
    """
    # Positional, in MEMBER_FIELDS order: building the Member from a list is cheaper than
    # from keywords, and this runs once per input row.
    values: list[object] = [None] * len(MEMBER_FIELDS)
    get = fields.get
    for index, name, parse, seen in _PARSERS:
        raw = get(name)
        if raw is None:
            continue
        if type(raw) is str:
            value = seen.get(raw) if seen is not None else None
            if value is None:
                value = _typed(parse, name, raw)
                if seen is not None and len(seen) < _SEEN_MAX:
                    seen[raw] = value
            if value is _ABSENT:
                continue
        else:
            value = parse(name, raw)
        if type(value) is FieldError:
            return value
        values[index] = value
    return _kind_problem(values) or Member(*values)  # type: ignore[arg-type]


def _kind_problem(values: Sequence[object]) -> FieldError | None:
    """What a member of either type lacks (its values in ``MEMBER_FIELDS`` order, absent
    as None or empty): an IP member has a host; an ECS member (one with an ``ecs_id``, or
    with an ``ecs_name`` and no host) has both ECS fields, both mandatory for that type."""
    host, ecs_id, ecs_name = values[_HOST], values[_ECS_ID], values[_ECS_NAME]
    if ecs_id:
        if not ecs_name:
            return FieldError(
                "ecs_name", Problem.MISSING, "an ECS member (ecs_id given) needs ecs_name"
            )
        return None
    if ecs_name and not host:
        return FieldError("ecs_id", Problem.MISSING, "an ECS member (ecs_name given) needs ecs_id")
    if not host:
        return FieldError("host", Problem.MISSING, "a member needs host or ecs_id")
    return None


def field_value(name: str, raw: object) -> object:
    """One member field's value from its cell, by the rules of :func:`member_from_fields`:
    the typed value, a :class:`FieldError`, or None when the cell is absent or blank.

    Every field's rule reads that field alone (the host's too: it only needs another field
    when it is absent). :mod:`worker.fastlane` relies on it: it asks this once per distinct
    cell text of a column, instead of once per row, and so must anything that changes a rule.
    """
    if raw is None:
        return None
    parse = _PARSERS[MEMBER_FIELDS.index(name)][2]
    value = _typed(parse, name, raw) if type(raw) is str else parse(name, raw)
    return None if value is _ABSENT else value


def _typed(parse: Callable[[str, object], object], name: str, raw: str) -> object:
    """A text cell's value: stripped, and _ABSENT when blank."""
    text = raw.strip()
    return parse(name, text) if text else _ABSENT


def _parse_int(name: str, raw: object) -> object:
    if type(raw) is str:
        if raw.isascii() and raw.isdigit() and len(raw) < 10:
            value = int(raw)
        elif _WHOLE_RE.fullmatch(raw) is None:
            return FieldError(name, Problem.TYPE, f"must be a whole number, got {_show(raw)}")
        elif len(raw) > 20:
            # int() refuses over 4300 digits; a value written that long is out of range.
            low, high = INT_RANGES[name]
            return FieldError(name, Problem.RANGE, f"must be {low}..{high}, got {_show(raw)}")
        else:
            value = int(raw)
    elif type(raw) is int:
        value = raw
    else:
        return FieldError(name, Problem.TYPE, f"must be a whole number, got {_show(raw)}")
    low, high = INT_RANGES[name]
    if not low <= value <= high:
        return FieldError(name, Problem.RANGE, f"must be {low}..{high}, got {value}")
    return value


_BOOLS: Final = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}


def _parse_bool(name: str, raw: object) -> object:
    if type(raw) is bool:
        return raw
    value = (
        _BOOLS.get(raw.lower())
        if type(raw) is str
        else _BOOLS.get(str(raw))
        if type(raw) is int
        else None
    )
    if value is None:
        return FieldError(name, Problem.TYPE, f"must be true/false/yes/no/1/0, got {_show(raw)}")
    return value


def _parse_text(name: str, raw: object) -> object:
    if type(raw) is not str:
        return FieldError(name, Problem.TYPE, f"must be text, got {_show(raw)}")
    limit = STR_MAX[name]
    if len(raw) > limit:
        return FieldError(name, Problem.TOO_LONG, f"longer than {limit} characters")
    if name == "host":
        return parse_host(raw)
    if not _string_ok(name, raw):
        return FieldError(name, Problem.MALFORMED, f"malformed value {_show(raw)}")
    return raw


# Most fields take a few distinct values over a whole inventory (a port, a weight, a group
# name): their cells are parsed once per distinct text, and the value (or the FieldError,
# or _ABSENT for a blank cell) remembered, up to _SEEN_MAX texts a field. Addresses and ECS
# ids are unique per row, so they are not. What is remembered is immutable.
_SEEN_MAX: Final = 1024
_ABSENT: Final = object()
_PARSERS: Final = tuple(
    (
        index,
        name,
        _parse_int if name in INT_RANGES else _parse_bool if name in BOOL_FIELDS else _parse_text,
        cast("dict[str, object] | None", {} if name in FEW_VALUED else None),
    )
    for index, name in enumerate(MEMBER_FIELDS)
)
_HOST: Final = MEMBER_FIELDS.index("host")
_ECS_ID: Final = MEMBER_FIELDS.index("ecs_id")
_ECS_NAME: Final = MEMBER_FIELDS.index("ecs_name")


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Channel(NamedTuple):
    """The identity of a VPC channel: the scope inside which addresses are unique.

    A named tuple rather than a dataclass: it is hashed for every row (dedupe, batching,
    queues), and a tuple hashes in C.
    """

    project_id: str
    instance_id: str
    vpc_channel_id: str

    def __str__(self) -> str:
        return f"{self.project_id}/{self.instance_id}/{self.vpc_channel_id}"

    def ids(self) -> tuple[str, str, str]:
        return self.project_id, self.instance_id, self.vpc_channel_id


def channel_from_fields(
    fields: Mapping[str, object], defaults: Mapping[str, str]
) -> Channel | FieldError:
    """Read a row's channel identity; ``defaults`` fill ids that are absent or empty."""
    ids: list[str] = []
    for name in CHANNEL_FIELDS:
        raw = fields.get(name)
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or raw == "":
            raw = defaults.get(name)
        if raw is not None and not isinstance(raw, str):
            return FieldError(name, Problem.TYPE, f"must be text, got {_show(raw)}")
        error = check_id(name, raw)
        if error is not None:
            return error
        assert raw is not None
        ids.append(raw)
    return Channel(*ids)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an address, bracketed or not) is this machine's own:
    ``localhost`` or a loopback address. Another name could resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
