"""The difference between a channel's live members and its inventory. Pure.

Both sides are keyed the same way dedupe keys rows: the canonical address (an ECS
member's ECS id, as the service fills in its host; else the host). A live member whose
address matches an inventory member is unchanged when every field the inventory gives
equals the live one (a field the inventory leaves empty is not a difference), else
updated; an inventory member with no live match is created; a live member no inventory
member names is an extra (the first live member of an address is the one matched; any
later one with the same address is an extra too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from worker.members import JSON_TYPES, MEMBER_FIELDS, Member, check_field, check_member
from worker.protocol import member_address

Live = Mapping[str, object]
# The address is the key both sides were matched on: the host's spelling is not a change.
_COMPARED: Final = tuple(
    (index, name) for index, name in enumerate(MEMBER_FIELDS) if name != "host"
)


@dataclass(slots=True)
class Diff:
    """Addresses of the inventory by what they need, and the live members it does not name."""

    creates: list[str] = field(default_factory=list)
    updates: list[tuple[str, Live]] = field(default_factory=list)
    unchanged: list[tuple[str, Live]] = field(default_factory=list)
    extras: list[Live] = field(default_factory=list)


def differs(member: Member, live: Live) -> bool:
    """Whether a field the inventory gives differs from the live member's."""
    values = member.values()
    for index, name in _COMPARED:
        wanted = values[index]
        if wanted is None:
            continue
        have = live.get(name)
        # bool is an int: True == 1 must not pass for a weight, nor 1 for is_backup.
        if have != wanted or type(have) is not type(wanted):
            return True
    return False


def kept(member: Member, live: Live) -> Member:
    """The member an update sends: the inventory's values, and the live member's for the
    fields the inventory leaves empty. An update is an upsert, which gives a field left out
    its default (a weight of 1, no group): sent alone, the inventory's values would reset
    what it does not name. Live values the member's rules refuse are left out."""
    values = list(member.values())
    for index, name in _COMPARED:
        if values[index] is None:
            have = live.get(name)
            if (
                have is not None
                and have != ""
                and type(have) is JSON_TYPES[name]
                and check_field(name, have) is None
            ):
                values[index] = have
    merged = Member(*values)  # type: ignore[arg-type]
    return member if check_member(merged) is not None else merged


def diff(
    desired: Mapping[str, Member], live: Sequence[Live], named: frozenset[str] = frozenset()
) -> Diff:
    """What it takes for ``live`` to hold ``desired``. ``named`` are addresses the
    inventory names but which need no decision here (rows an earlier run landed): their
    live members are neither changed nor extras."""
    result = Diff()
    matched: set[str] = set()
    for info in live:
        address = member_address(info)
        if (
            address is None
            or address in matched
            or (address not in desired and address not in named)
        ):
            result.extras.append(info)
            continue
        matched.add(address)
        if address in named and address not in desired:
            continue
        target = result.updates if differs(desired[address], info) else result.unchanged
        target.append((address, info))
    result.creates.extend(address for address in desired if address not in matched)
    return result
