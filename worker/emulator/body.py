"""Reading a members request body: strict JSON types first, then the shared member rules.

Pure: bytes in, validated members (or the one :class:`ApiError` the service would answer)
out. The whole body is checked before anything is applied, so a refused request changes
nothing.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Final

import orjson

from worker.emulator import errors
from worker.members import (
    BOOL_FIELDS,
    INT_RANGES,
    MEMBER_FIELDS,
    Member,
    canonical_address,
    check_member,
)

# The JSON type each field must have. ``type(v) is int`` keeps booleans out, since JSON
# decoders give bool for true/false and bool subclasses int.
_KINDS: Final = tuple(
    (name, int if name in INT_RANGES else bool if name in BOOL_FIELDS else str)
    for name in MEMBER_FIELDS
)
# Members are built positionally on the hot path; this keeps that honest.
assert tuple(f.name for f in fields(Member)) == MEMBER_FIELDS
_IPV4_CHARS: Final = "0123456789."


def parse_body(raw: bytes, max_members: int | None = None) -> list[tuple[str, Member]]:
    """Decode and validate ``{"members": [MemberInfo, ...]}``.

    Returns each member with its canonical address, in body order (duplicates kept; the
    state applies first-wins). ``max_members`` caps the list length. Raises ApiError:
    APIG.2000 when the body is not a JSON object, APIG.2001 when ``members`` is absent or
    empty (or a member has neither host nor ecs_id), APIG.2003 when the list is longer than
    ``max_members``, and for the first bad member APIG.2012 (wrong JSON type, too long,
    malformed) or APIG.2004 (number out of range). JSON null counts as absent.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.serialization(str(exc)) from None
    if type(document) is not dict:
        raise errors.serialization("the request body must be a JSON object")
    items = document.get("members")
    if items is None:
        raise errors.missing("members")
    if type(items) is not list:
        raise errors.invalid("members")
    if not items:
        raise errors.missing("members")
    if max_members is not None and len(items) > max_members:
        raise errors.too_large("members")
    return [_member(item) for item in items]


def _member(item: object) -> tuple[str, Member]:
    if type(item) is not dict:
        raise errors.invalid("members")
    get = item.get
    values: list[object] = []
    for name, kind in _KINDS:
        value = get(name)
        if value is not None and type(value) is not kind:
            raise errors.invalid(name)
        values.append(value)
    member = Member(*values)  # type: ignore[arg-type]
    problem = check_member(member)
    if problem is not None:
        raise errors.for_problem(problem.field, problem.problem)
    return _address(member), member


def _address(member: Member) -> str:
    host = member.host
    # check_member accepted the host, so one made only of digits and dots is a dotted-quad
    # IPv4 literal (all-numeric names are refused), which is already canonical: this skips
    # a second IP parse per member on the hot path.
    if host and not host.strip(_IPV4_CHARS):
        return host
    address = canonical_address(host, member.ecs_id)
    assert address is not None, "check_member accepted a member without an address"
    return address
