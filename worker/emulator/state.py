"""The emulator's channels and their members: pure and synchronous.

No clocks and no global randomness: callers pass ``now`` (Unix seconds) and the state
draws ids from the ``random.Random`` it was given, so a seeded run is reproducible.
Every mutating method checks everything first and then applies, so a refusal (an
exception) leaves the state exactly as it was.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, TypedDict

from worker.emulator.body import Entry, MemberInfo
from worker.emulator.config import DEFAULT_PORT, ChannelSpec
from worker.members import check_id

ChannelKey = tuple[str, str, str]
"""(project_id, instance_id, vpc_channel_id)."""

DEFAULT_WEIGHT: Final = 1
DEFAULT_STATUS: Final = 1


def ecs_address(ecs_id: str) -> str:
    """The private address the service gives an ECS member as its host (the reference's
    example answers a body with an ``ecs_id`` and no host with ``"host": "192.168.0.17"``):
    here one of 192.168.0.1-255.254, the same for an ECS id every time."""
    number = zlib.crc32(ecs_id.encode())
    return f"192.168.{number >> 8 & 255}.{number % 254 + 1}"


class VpcMemberInfo(TypedDict):
    """A member as the service reports it, fields in the service's order.

    Absent text fields are ``""``, so every field always has one JSON type. Plain dicts
    (not dataclasses) because they serialise several times faster and, holding only
    strings, numbers and booleans, stay out of the garbage collector's way.
    """

    host: str
    weight: int
    is_backup: bool
    member_group_name: str
    status: int
    port: int
    ecs_id: str
    ecs_name: str
    id: str
    vpc_channel_id: str
    create_time: str
    member_group_id: str


class UnknownInstance(LookupError):
    """No such instance in the project (and auto-create is off)."""


class UnknownChannel(LookupError):
    """The instance exists but has no such channel (and auto-create is off)."""


class QuotaExceeded(ValueError):
    """The change would take the channel past its member limit; nothing was applied."""

    def __init__(self, limit: int, wanted: int) -> None:
        super().__init__(f"the channel allows {limit} members, the request needs {wanted}")
        self.limit = limit
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class Upserted:
    """What one add-or-update did: the members in body order (first definitions only)."""

    members: list[VpcMemberInfo]
    created: int
    updated: int


def format_time(now: float) -> str:
    """Unix seconds as the service writes times: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def new_ids(rng: random.Random, count: int) -> list[str]:
    """``count`` random 32-hex ids like the service's (UUIDs without dashes).

    128 random bits make a repeat within a channel vanishingly unlikely (about 2**-64 even
    for billions of ids), so ids are not checked against the ones in use.
    """
    digits = rng.randbytes(16 * count).hex()
    return [digits[start : start + 32] for start in range(0, 32 * count, 32)]


class ChannelState:
    """One VPC channel: its members keyed by canonical address, in creation order."""

    __slots__ = ("_groups", "_members", "_rng", "_template", "key", "max_ecs", "max_members")

    def __init__(
        self,
        key: ChannelKey,
        port: int,
        max_members: int | None,
        rng: random.Random,
        max_ecs: int | None = None,
    ) -> None:
        self.key = key
        self.max_members = max_members
        self.max_ecs = max_ecs
        self._rng = rng
        self._members: dict[str, VpcMemberInfo] = {}
        self._groups: dict[str, str] = {}
        # The defaults in the service's field order: merging a member's fields over it (in
        # C) fills the defaults and keeps the order, several times faster than by field.
        self._template: VpcMemberInfo = {
            "host": "",
            "weight": DEFAULT_WEIGHT,
            "is_backup": False,
            "member_group_name": "",
            "status": DEFAULT_STATUS,
            "port": port,
            "ecs_id": "",
            "ecs_name": "",
            "id": "",
            "vpc_channel_id": key[2],
            "create_time": "",
            "member_group_id": "",
        }

    @property
    def port(self) -> int:
        """The port of members that give none."""
        return self._template["port"]

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[VpcMemberInfo]:
        """Every member, in creation order. Read-only: do not modify what it yields."""
        return iter(self._members.values())

    def get(self, address: str) -> VpcMemberInfo | None:
        """The member at a canonical address, if any."""
        return self._members.get(address)

    def group_id(self, name: str) -> str:
        """The stable id of a member group of this channel, made on first use."""
        group_id = self._groups.get(name)
        if group_id is None:
            group_id = self._groups[name] = new_ids(self._rng, 1)[0]
        return group_id

    def upsert(self, entries: Sequence[Entry], now: float) -> Upserted:
        """Add or update members given as (canonical address, member) pairs.

        The first definition of an address wins; later ones are ignored. An existing
        address keeps its ``id`` and ``create_time`` and takes every other field from the
        new definition (absent fields take their defaults). Raises QuotaExceeded, changing
        nothing, when the new addresses would take the channel past ``max_members``.
        """
        firsts: dict[str, MemberInfo] = {}
        for address, member in entries:
            firsts.setdefault(address, member)
        if self.max_members is not None:
            existing = self._members
            fresh = sum(1 for address in firsts if address not in existing)
            if len(existing) + fresh > self.max_members:
                raise QuotaExceeded(self.max_members, len(existing) + fresh)
        self._check_ecs(firsts)
        return self._apply(firsts, now)

    def replace(self, entries: Sequence[Entry], now: float, group: str | None = None) -> Upserted:
        """Make the channel hold exactly these members (first wins), keeping the ids of
        addresses that stay; raises QuotaExceeded, changing nothing, when too many.

        With ``group``, only that member group is replaced: the entries of other groups
        are ignored, and the members of other groups stay."""
        firsts: dict[str, MemberInfo] = {}
        for address, member in entries:
            if group is None or member.get("member_group_name", "") == group:
                firsts.setdefault(address, member)
        members = self._members
        leaving = [
            address
            for address, member in members.items()
            if address not in firsts and (group is None or member["member_group_name"] == group)
        ]
        if self.max_members is not None:
            wanted = len(members) - len(leaving) + sum(1 for a in firsts if a not in members)
            if wanted > self.max_members:
                raise QuotaExceeded(self.max_members, wanted)
        self._check_ecs(firsts, leaving)
        for address in leaving:
            del members[address]
        return self._apply(firsts, now)

    def _check_ecs(self, firsts: dict[str, MemberInfo], leaving: Sequence[str] = ()) -> None:
        """QuotaExceeded when the change would leave more ECS members than ``max_ecs``."""
        limit = self.max_ecs
        if limit is None or not any(member.get("ecs_id") for member in firsts.values()):
            return  # no ECS member given: none is added
        gone = set(leaving)
        wanted = sum(1 for member in firsts.values() if member.get("ecs_id")) + sum(
            1
            for address, member in self._members.items()
            if member["ecs_id"] and address not in firsts and address not in gone
        )
        if wanted > limit:
            raise QuotaExceeded(limit, wanted)

    def _apply(self, firsts: dict[str, MemberInfo], now: float) -> Upserted:
        members = self._members
        groups = self._groups
        template = self._template
        now_text = format_time(now)
        fresh = iter(new_ids(self._rng, len(firsts)))
        result: list[VpcMemberInfo] = []
        created = 0
        for address, fields in firsts.items():
            group = fields.get("member_group_name")
            group_id = (groups.get(group) or self.group_id(group)) if group else ""
            old = members.get(address)
            if old is None:
                member_id = next(fresh)
                created_at = now_text
                created += 1
            else:
                member_id, created_at = old["id"], old["create_time"]
            stored: VpcMemberInfo = {
                **template,
                **fields,
                "id": member_id,
                "create_time": created_at,
                "member_group_id": group_id,
            }
            ecs_id = fields.get("ecs_id")
            if ecs_id and not stored["host"]:
                stored["host"] = ecs_address(ecs_id)
            members[address] = stored
            result.append(stored)
        return Upserted(result, created, len(result) - created)

    def set_status(self, member_ids: Sequence[str], status: int) -> str | None:
        """Give the members with these ids ``status`` (1 enabled, 2 disabled); the first
        id no member has, changing nothing, or None."""
        by_id = {member["id"]: member for member in self._members.values()}
        for member_id in member_ids:
            if member_id not in by_id:
                return member_id
        for member_id in member_ids:
            by_id[member_id]["status"] = status
        return None

    def delete(self, member_id: str) -> bool:
        """Remove a member by id; False when there is none."""
        # A scan, not an index: deletes are rare, and an id index would cost every upsert.
        for address, member in self._members.items():
            if member["id"] == member_id:
                del self._members[address]
                return True
        return False

    def page(
        self,
        offset: int,
        limit: int,
        *,
        name: str | None = None,
        member_group_name: str | None = None,
        member_group_id: str | None = None,
        precise: Iterable[str] = (),
    ) -> tuple[int, list[VpcMemberInfo]]:
        """The total matching the filters and the page ``[offset, offset + limit)``.

        ``name`` matches the host or the ECS name, ``member_group_name`` the group name:
        as substrings, or exactly when named in ``precise``. ``member_group_id`` matches
        exactly. Order is creation order.
        """
        exact = frozenset(precise)

        def matches(value: str, wanted: str | None, key: str) -> bool:
            if wanted is None:
                return True
            return value == wanted if key in exact else wanted in value

        chosen = [
            m
            for m in self._members.values()
            if (matches(m["host"], name, "name") or matches(m["ecs_name"], name, "name"))
            and matches(m["member_group_name"], member_group_name, "member_group_name")
            and (member_group_id is None or m["member_group_id"] == member_group_id)
        ]
        return len(chosen), chosen[offset : offset + limit]

    def to_json(self) -> dict[str, object]:
        project_id, instance_id, vpc_channel_id = self.key
        return {
            "project_id": project_id,
            "instance_id": instance_id,
            "vpc_channel_id": vpc_channel_id,
            "port": self.port,
            "max_members": self.max_members,
            "members": list(self),
        }


@dataclass(slots=True)
class EmulatorState:
    """Every channel the emulator knows, by (project, instance, channel).

    ``auto_create`` makes unknown instances and channels exist on first lookup, with
    ``DEFAULT_PORT`` and ``max_members_per_channel`` as their limit.
    """

    rng: random.Random
    auto_create: bool = False
    max_members_per_channel: int | None = None
    max_ecs_members_per_channel: int | None = None
    channels: dict[ChannelKey, ChannelState] = field(default_factory=dict)
    _instances: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[ChannelSpec],
        rng: random.Random,
        *,
        auto_create: bool = False,
        max_members_per_channel: int | None = None,
        max_ecs_members_per_channel: int | None = None,
    ) -> EmulatorState:
        state = cls(rng, auto_create, max_members_per_channel, max_ecs_members_per_channel)
        for spec in specs:
            state.add_channel(
                (spec.project_id, spec.instance_id, spec.vpc_channel_id),
                spec.port,
                spec.max_members,
            )
        return state

    def add_channel(
        self, key: ChannelKey, port: int = DEFAULT_PORT, max_members: int | None = None
    ) -> ChannelState:
        """Create a channel (or return the existing one unchanged)."""
        channel = self.channels.get(key)
        if channel is None:
            limit = max_members if max_members is not None else self.max_members_per_channel
            channel = self.channels[key] = ChannelState(
                key, port, limit, self.rng, self.max_ecs_members_per_channel
            )
            self._instances.add(key[:2])
        return channel

    def channel(self, key: ChannelKey) -> ChannelState:
        """The channel at ``key``; raises UnknownInstance or UnknownChannel unless
        auto-create is on."""
        channel = self.channels.get(key)
        if channel is not None:
            return channel
        if self.auto_create:
            # Only ids a channel can have are made: any other (``ch.1``) names none, as at
            # the service, and a --dump of the state loads again as a fixture.
            if check_id("id", key[0]) or check_id("id", key[1]):
                raise UnknownInstance(key[1])
            if check_id("id", key[2]):
                raise UnknownChannel(key[2])
            return self.add_channel(key)
        if key[:2] not in self._instances:
            raise UnknownInstance(key[1])
        raise UnknownChannel(key[2])

    def member_count(self) -> int:
        return sum(len(channel) for channel in self.channels.values())

    def to_json(self) -> dict[str, object]:
        """Every channel with its members, in creation order (the ``--dump`` format)."""
        return {"channels": [channel.to_json() for channel in self.channels.values()]}
