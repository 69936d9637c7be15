"""Reading a members request body: strict JSON types first, then the shared member rules.

Pure: bytes in, validated members (or the one :class:`ApiError` the service would answer)
out. The whole body is checked before anything is applied, so a refused request changes
nothing.

Speed: :func:`worker.members.check_member` is the one authority on what a member may hold,
but at ~4 µs a member it would cap the emulator well below its throughput target. So a
member is accepted without it only when every field is already known good: a host that is
a canonical dotted-quad IPv4 literal (valid and canonical by construction), and other
values that an earlier member carrying them passed ``check_member`` with. Anything else,
including every member that is refused, goes through ``check_member``, so the answers are
exactly its answers.
"""

from __future__ import annotations

from typing import Final, TypedDict, cast

import orjson

from worker.emulator import errors
from worker.members import (
    FEW_VALUED,
    JSON_TYPES,
    USABLE_IPV4,
    Member,
    canonical_address,
    check_field,
    check_member,
)


class BodyBudget:
    """The bytes of request bodies the emulator holds at once, and the most it will.

    A request takes its body's bytes (all at once when it declares its length, else as
    they arrive) and gives them back once answered, so a flood of large bodies cannot make
    the emulator hold more than ``limit``.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes as held; False (counting nothing) if over the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Stop counting ``size`` bytes that :meth:`take` counted."""
        self.held -= size


class MemberInfo(TypedDict, total=False):
    """A validated request member: only the API's fields, only those given (not null)."""

    host: str
    port: int
    weight: int
    is_backup: bool
    member_group_name: str
    status: int
    ecs_id: str
    ecs_name: str


# Fields whose values repeat across an inventory, so remembering good values pays off.
# Addresses are left out: they are unique, and remembering them would grow without bound.
_REMEMBERED: Final = frozenset(FEW_VALUED)
_REMEMBER_AT_MOST: Final = 10_000

Entry = tuple[str, MemberInfo]
"""A member with its canonical address."""


class BodyReader:
    """Decodes and validates members bodies, remembering field values known to be good.

    The memory only ever holds values that passed ``check_member`` inside a member that
    passed as a whole; it relies on each field's rule depending on that field alone, which
    is how ``check_member`` is written (the one cross-field rule, host-or-ecs_id, is
    checked here per member).
    """

    __slots__ = ("_good",)

    def __init__(self) -> None:
        self._good: dict[str, set[object]] = {name: set() for name in JSON_TYPES}

    def parse_replace(
        self, raw: bytes | bytearray, max_members: int | None = None
    ) -> tuple[list[Entry], str | None]:
        """Decode and validate a PUT's ``{"members": [...], "member_group_name"?: G}``: the
        members as :meth:`parse` reads them, and the group G that the PUT replaces alone
        (None: the whole channel). G is checked as a member's group name is."""
        document = _document(raw)
        group = document.get("member_group_name")
        if group is not None:
            if type(group) is not str:
                raise errors.invalid("member_group_name")
            problem = check_field("member_group_name", group)
            if problem is not None:
                raise errors.for_problem(problem.field, problem.problem)
        return self.members(document, max_members), group

    @staticmethod
    def parse_ids(raw: bytes | bytearray) -> list[str]:
        """Decode ``{"member_ids": [id, ...]}`` (batch-enable, batch-disable): APIG.2001
        when the list is absent or empty, APIG.2012 when it is no list of strings."""
        ids = _document(raw).get("member_ids")
        if ids is None or ids == []:
            raise errors.missing("member_ids")
        if type(ids) is not list or any(type(member_id) is not str for member_id in ids):
            raise errors.invalid("member_ids")
        return ids

    def parse(self, raw: bytes | bytearray, max_members: int | None = None) -> list[Entry]:
        """Decode and validate ``{"members": [MemberInfo, ...]}``.

        Returns each member with its canonical address, in body order (duplicates kept;
        the state applies first-wins). ``max_members`` caps the list length. Raises
        ApiError: APIG.2000 when the body is not a JSON object, APIG.2001 when ``members``
        is absent or empty (or a member has neither host nor ecs_id), APIG.2003 when the
        list is longer than ``max_members``, and for the first bad member APIG.2012 (wrong
        JSON type, too long, malformed) or APIG.2004 (number out of range). Unknown keys
        are ignored; JSON null counts as absent.
        """
        return self.members(_document(raw), max_members)

    def members(self, document: dict[str, object], max_members: int | None) -> list[Entry]:
        """The members of a decoded body (see :meth:`parse`)."""
        items = document.get("members")
        if items is None:
            raise errors.missing("members")
        if type(items) is not list:
            raise errors.invalid("members")
        if not items:
            raise errors.missing("members")
        if max_members is not None and len(items) > max_members:
            raise errors.too_large("members")
        # The JSON type each field must have, checked as ``type(v) is kind``: that keeps
        # booleans out of integers, since bool subclasses int.
        kinds = JSON_TYPES
        good = self._good
        ipv4 = USABLE_IPV4.fullmatch
        entries: list[Entry] = []
        for item in items:
            if type(item) is not dict:
                raise errors.invalid("members")
            host = item.get("host")
            # The fast path: a canonical IPv4 host and nothing but remembered good values.
            if type(host) is str and ipv4(host):
                for key, value in item.items():
                    if type(value) is not kinds.get(key) or (
                        key != "host" and value not in good[key]
                    ):
                        break
                else:
                    entries.append((host, item))  # type: ignore[arg-type]
                    continue
            entries.append(self._check(item))
        return entries

    def _check(self, item: dict[str, object]) -> Entry:
        """The full check of one member, through ``check_member``."""
        values: dict[str, object] = {}
        for name, kind in JSON_TYPES.items():
            value = item.get(name)
            if value is None:
                continue
            if type(value) is not kind:
                raise errors.invalid(name)
            values[name] = value
        member = Member(**values)  # type: ignore[arg-type]
        problem = check_member(member)
        if problem is not None:
            raise errors.for_problem(problem.field, problem.problem)
        address = canonical_address(member.host, member.ecs_id)
        assert address is not None, "check_member accepted a member without an address"
        for name in _REMEMBERED.intersection(values):
            remembered = self._good[name]
            if len(remembered) < _REMEMBER_AT_MOST:
                remembered.add(values[name])
        return address, cast(MemberInfo, values)


def _document(raw: bytes | bytearray) -> dict[str, object]:
    """A body decoded: APIG.2000 unless it is a JSON object."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.serialization(str(exc)) from None
    if type(document) is not dict:
        raise errors.serialization("the request body must be a JSON object")
    return document
