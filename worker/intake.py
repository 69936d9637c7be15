"""From records to members ready to send: validation and first-wins dedupe. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Final

import msgspec
import orjson

from worker.dedupe import FirstWins
from worker.inventory import Record
from worker.members import (
    CHANNEL_FIELDS,
    Channel,
    FieldError,
    Member,
    channel_from_fields,
    member_from_fields,
)
from worker.outcomes import Action, Outcome, Result
from worker.reports import RowInfo, landed_key
from worker.shards import Shard

_LINE_BITS: Final = 40
_CHANNEL_CACHE: Final = 100_000


@dataclass(slots=True)
class Entry:
    """A valid, first-of-its-address member on its way to the API."""

    row: RowInfo
    channel: Channel
    address: str
    body: bytes
    attempts: int = 0
    # What landing it does: upserted (run), or what a sync's diff planned for it.
    action: Action = Action.UPSERTED


class FastEntry(msgspec.Struct, gc=False):
    """A row :mod:`worker.fastlane` accepted, on its way to the API: its request body, and
    its landed report row's cells but the answer's (``head``: source to ecs_name; ``tail``:
    the user's columns, after a comma), made in advance. Its :class:`RowInfo` is the
    reference's, made from the row's line (``raw``) only when something needs it (a row
    that does not land the plain way); until then the entry itself holds whether it is
    settled. A C struct, out of the garbage collector's sight: one is made per row, and
    it refers to nothing that refers back to it."""

    channel: Channel
    address: str
    body: bytes
    head: str
    tail: str
    raw: bytes
    line: int
    rebuild: Callable[[bytes, int], Record]
    attempts: int = 0
    action: Action = Action.UPSERTED
    made: RowInfo | None = None
    done: bool = False

    @property
    def row(self) -> RowInfo:
        if self.made is None:
            record = self.rebuild(self.raw, self.line)
            member = member_from_fields(record.fields)
            assert isinstance(member, Member), "the fast lane accepts valid rows only"
            self.made = RowInfo(
                record.source, record.line, record.fields, self.channel, member, self.done
            )
        return self.made

    @property
    def settled(self) -> bool:
        return self.made.settled if self.made is not None else self.done

    @settled.setter
    def settled(self, value: bool) -> None:
        self.done = value
        if self.made is not None:
            self.made.settled = value


# What a post carries for each of its rows.
Sendable = Entry | FastEntry


@dataclass(frozen=True, slots=True)
class AlreadyLanded:
    """A row an earlier, interrupted run already landed (``--resume``): counted, not sent.
    Its channel and address still count as named by the inventory (a sync must not take
    that member for one to remove)."""

    channel: Channel
    address: str


class OtherShard:
    """A row of a channel another shard owns (``--shard``): neither sent nor reported."""


OTHER_SHARD: Final = OtherShard()

Settled = tuple[RowInfo, Result]


class Intake:
    """Turns each record into an :class:`Entry` to send or a settled report row.

    Parameters:
        defaults: project/instance/channel ids that fill absent or empty columns.
        landed: identities (:func:`~worker.reports.landed_key`: source, line, channel and
            address) of rows an earlier run landed; they still claim their address, so
            every dedupe decision is the same as in the first run.
        shard: when given, rows of channels other shards own are passed over.

    Guarantees: deterministic; the first valid row of an address in a channel wins, across
    every input fed to the same Intake; every later one settles as ``duplicate`` naming
    the winner as ``source:line``.
    """

    __slots__ = (
        "_channels",
        "_dedupe",
        "_defaults",
        "_landed",
        "_names",
        "_owned",
        "_shard",
        "_sources",
    )

    def __init__(
        self,
        defaults: Mapping[str, str],
        landed: Set[int] = frozenset(),
        shard: Shard | None = None,
    ) -> None:
        self._defaults = dict(defaults)
        self._landed = landed
        self._shard = shard
        self._owned: dict[Channel | None, bool] = {}
        self._dedupe = FirstWins()
        self._sources: dict[str, int] = {}
        self._names: list[str] = []
        self._channels: dict[tuple[object, object, object], Channel | FieldError] = {}

    @property
    def defaults(self) -> dict[str, str]:
        return dict(self._defaults)

    @property
    def distinct(self) -> int:
        return len(self._dedupe)

    def process(self, record: Record) -> Entry | Settled | AlreadyLanded | OtherShard:
        if record.problem is not None:
            if not self._owns(None):
                return OTHER_SHARD
            row = RowInfo(record.source, record.line, record.fields)
            return row, _invalid("invalid.row", f"row {record.problem}")
        channel = self.channel(record.fields)
        if isinstance(channel, FieldError):
            if not self._owns(None):
                return OTHER_SHARD
            return RowInfo(record.source, record.line, record.fields), _refused(channel)
        if self._shard is not None and not self._owns(channel):
            return OTHER_SHARD
        member = member_from_fields(record.fields)
        if isinstance(member, FieldError):
            return RowInfo(record.source, record.line, record.fields, channel), _refused(member)
        fields = record.fields
        row = RowInfo(record.source, record.line, fields, channel, member)
        address = member.address
        if fields.get("outcome") == "duplicate":
            # A row that lost a dedupe, fed back from errors.csv: it stays the loser, and
            # claims nothing, so a re-feed can never make it overwrite the winner.
            return row, Result(
                Outcome.DUPLICATE,
                error_code="duplicate",
                error_msg=f"address {address} lost a dedupe when this report was written",
                duplicate_of=str(fields.get("duplicate_of") or ""),
            )
        winner = self._dedupe.claim(channel, address, self._ref(record))
        if winner is not None:
            return row, Result(
                Outcome.DUPLICATE,
                error_code="duplicate",
                error_msg=f"address {address} already given for this channel",
                duplicate_of=self._where(winner),
            )
        if self._landed and (
            landed_key(record.source, record.line, channel, address) in self._landed
        ):
            return AlreadyLanded(channel, address)
        return Entry(row, channel, address, member_body(member))

    def _owns(self, channel: Channel | None) -> bool:
        if self._shard is None:
            return True
        owned = self._owned.get(channel)
        if owned is None:
            owned = self._owned[channel] = self._shard.owns(channel)
        return owned

    @property
    def plain(self) -> bool:
        """Whether every row's fate is its own and the inputs' (no shard to own channels,
        no earlier run's landed rows): what :mod:`worker.fastlane` asks of its intake."""
        return self._shard is None and not self._landed

    def claim(self, channel: Channel, address: str, ref: int) -> bool:
        """First-wins for a row the fast lane accepted, ``ref`` from :meth:`ref_base`: True
        when it wins (a loser goes to :meth:`process`, which names the winner)."""
        return self._dedupe.claim(channel, address, ref) is None

    def claim_all(self, runs: Sequence[tuple[Channel, Sequence[str], list[int]]]) -> bool:
        """First-wins for runs of rows the fast lane accepted, each one channel's: claims
        them all when they all win (see FirstWins.claim_all)."""
        return self._dedupe.claim_all(runs)

    def ref_base(self, source: str) -> int:
        """What a row's line is or-ed with to make its dedupe reference."""
        index = self._sources.get(source)
        if index is None:
            index = self._sources[source] = len(self._names)
            self._names.append(source)
        return index << _LINE_BITS

    def channel_of(self, ids: tuple[str | None, str | None, str | None]) -> Channel | FieldError:
        """:meth:`channel` of a row whose project, instance and channel ids are ``ids``
        (None where the row has none)."""
        found = self._channels.get(ids)
        if found is None:
            fields = {k: v for k, v in zip(CHANNEL_FIELDS, ids, strict=True) if v is not None}
            found = self.channel(fields)
        return found

    def channel(self, fields: Mapping[str, object]) -> Channel | FieldError:
        # Thousands of rows share a channel: its ids are checked once, and every row of it
        # shares one Channel object, which also makes the dedupe lookups cheaper.
        key = (fields.get("project_id"), fields.get("instance_id"), fields.get("vpc_channel_id"))
        try:
            found = self._channels.get(key)
        except TypeError:  # an NDJSON array or object as an id: unhashable, and invalid anyway
            return channel_from_fields(fields, self._defaults)
        if found is None:
            found = channel_from_fields(fields, self._defaults)
            # Text ids only: 1, 1.0 and true are one key to a dict, but three cells, and a
            # refusal quotes its own.
            if len(self._channels) < _CHANNEL_CACHE and all(
                type(part) is str or part is None for part in key
            ):
                self._channels[key] = found
        return found

    def _ref(self, record: Record) -> int:
        return self.ref_base(record.source) | record.line

    def _where(self, ref: int) -> str:
        index, line = ref >> _LINE_BITS, ref & ((1 << _LINE_BITS) - 1)
        return f"{self._names[index]}:{line}"


_FLAGS: Final = {
    "project_id": "--project-id",
    "instance_id": "--instance-id",
    "vpc_channel_id": "--channel-id",
}


def missing_columns(columns: Sequence[str], defaults: Mapping[str, str]) -> str | None:
    """Why no row of a CSV with this header could be valid, or None when it can.

    Caught at open, so a misnamed column stops the run before anything is sent instead
    of turning every row into an ``invalid`` report row.
    """
    missing = [
        f"{name} (or {_FLAGS[name]})"
        for name in CHANNEL_FIELDS
        if name not in columns and name not in defaults
    ]
    if "host" not in columns and "ecs_id" not in columns:
        missing.append("host or ecs_id")
    if not missing:
        return None
    said = f"the header has no column {', '.join(missing)}; it has {', '.join(columns)}"
    if len(columns) == 1:
        separator = next((s for s in (";", "\t", "|") if s in columns[0]), None)
        if separator is not None:
            said += f" (columns separated by {separator!r}? CSV columns are separated by commas)"
    return said


def member_body(member: Member) -> bytes:
    """A member's part of a request body, in a block of its own size.

    orjson returns its result inside the whole working buffer it wrote into (4 KiB for a
    100-byte member), and bodies wait in open batches by the tens of thousands: 200,000 of
    them held 800 MB, copies 42 MB. join() copies where ``bytes(data)`` would not.
    """
    return b"".join((orjson.dumps(member.to_json()), b""))


def _refused(error: FieldError) -> Result:
    return _invalid(f"invalid.{error.problem.value}", str(error))


def _invalid(code: str, message: str) -> Result:
    return Result(Outcome.INVALID, error_code=code, error_msg=message)
