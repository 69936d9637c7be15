"""sync: the diff as a pure function, and the planner in-process against the service's rules."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.inprocess import CHANNEL, Service, drive, records, row
from worker.diff import diff, differs
from worker.intake import Intake
from worker.ledger import Ledger
from worker.members import Member, member_from_fields
from worker.outcomes import Action, Fate, Outcome
from worker.protocol import Op
from worker.reconcile import Sync

# -- the diff ---------------------------------------------------------------------------------

ADDRESSES = st.sampled_from([f"10.0.0.{n}" for n in range(1, 9)])
WEIGHTS = st.none() | st.integers(0, 3)


@st.composite
def sides(draw: st.DrawFn) -> tuple[dict[str, Member], list[dict[str, object]]]:
    desired = {
        address: Member(host=address, weight=draw(WEIGHTS), port=draw(st.none() | st.just(80)))
        for address in draw(st.sets(ADDRESSES))
    }
    live = [
        {"host": address, "id": f"id-{n}", "weight": draw(st.integers(0, 3)), "port": 80}
        for n, address in enumerate(draw(st.lists(ADDRESSES, max_size=10)))
    ]
    return desired, live


@given(sides())
def test_the_diff_accounts_for_both_sides_exactly_once(
    both: tuple[dict[str, Member], list[dict[str, object]]],
) -> None:
    desired, live = both
    found = diff(desired, live)
    planned = found.creates + [a for a, _ in found.updates] + [a for a, _ in found.unchanged]
    # Every inventory address gets exactly one action.
    assert sorted(planned) == sorted(desired)
    # Every live member is matched once or is an extra.
    matched = [info for _, info in found.updates + found.unchanged]
    assert len(matched) + len(found.extras) == len(live)
    assert {id(m) for m in matched}.isdisjoint(id(m) for m in found.extras)
    live_addresses = {str(m["host"]) for m in live}
    assert set(found.creates) == set(desired) - live_addresses
    for address, info in found.unchanged:
        assert not differs(desired[address], info)
    for address, info in found.updates:
        assert differs(desired[address], info)
    # Applying the diff leaves nothing to do.
    after = [info for info in live if info not in found.extras]
    after = [
        {**info, **desired[str(info["host"])].to_json()} if str(info["host"]) in desired else info
        for info in after
    ]
    after += [{"host": a, "id": "new", **desired[a].to_json()} for a in found.creates]
    again = diff(desired, after)
    assert not again.creates and not again.updates and not again.extras


def test_a_field_the_inventory_leaves_empty_is_not_a_difference() -> None:
    live = {"host": "10.0.0.1", "port": 8080, "weight": 7, "is_backup": True, "id": "x"}
    assert not differs(Member(host="10.0.0.1"), live)
    assert not differs(Member(host="10.0.0.1", weight=7), live)
    assert differs(Member(host="10.0.0.1", weight=8), live)
    # A weight of 1 is not is_backup=True, whatever Python thinks of 1 == True.
    assert differs(Member(host="10.0.0.1", is_backup=1), live)  # type: ignore[arg-type]


def test_live_members_match_on_the_key_dedupe_uses() -> None:
    member = member_from_fields({"host": "2001:DB8::1"})
    assert isinstance(member, Member)
    found = diff({"2001:db8::1": member}, [{"host": "2001:db8:0::1", "id": "a"}])
    assert [a for a, _ in found.unchanged] == ["2001:db8::1"]


# -- the planner, in-process ----------------------------------------------------------------


def _sync(**options: object) -> partial[Sync]:
    return partial(_make, **options)


def _make(intake: Intake, ledger: Ledger, **options: object) -> Sync:
    return Sync(intake, ledger, 100, 1 << 20, **options)  # type: ignore[arg-type]


def _host(n: int) -> str:
    return f"10.0.{n // 250}.{n % 250}"


def _seeded(live: int, weight: int = 1, channel: tuple[str, str, str] = CHANNEL) -> Service:
    service = Service()
    state = service.state.add_channel(channel)
    hosts = [_host(n) for n in range(1, live + 1)]
    state.upsert([(h, {"host": h, "weight": weight}) for h in hosts], 1.7e9)  # type: ignore[misc]
    return service


def _inventory(hosts: range, weight: int = 1) -> list[dict[str, object]]:
    return [row("c1", _host(n), weight=weight) for n in hosts]


async def test_sync_sends_only_what_differs_and_prunes_what_is_not_named(tmp_path: Path) -> None:
    # Live: 1..40 at weight 1. Inventory: 1..25 unchanged, 26..30 at weight 2, 41..50 new;
    # 31..40 are not named.
    service = _seeded(40)
    rows = records(
        _inventory(range(1, 26)) + _inventory(range(26, 31), 2) + _inventory(range(41, 51))
    )
    ran = await drive(rows, service, planner=_sync(prune=True), reports=tmp_path / "r")
    tally = ran.ledger.tally
    assert tally[Outcome.SUCCEEDED] == tally.total == 40
    assert (tally.action(Action.UNCHANGED), tally.action(Action.UPDATED)) == (25, 5)
    assert tally.action(Action.CREATED) == 10
    assert ran.ledger.fates[Fate.REMOVED] == 10
    hosts = {str(m["host"]): m["weight"] for m in service.members(CHANNEL)}
    assert sorted(hosts) == sorted(_host(n) for n in (*range(1, 31), *range(41, 51)))
    assert all(hosts[_host(n)] == 2 for n in range(26, 31))
    ops = Counter(r.op for r in service.requests)
    assert ops == {Op.LIST: 1, Op.POST: 2, Op.DELETE: 10}  # creates and updates apart
    # Additions and updates came before any deletion.
    order = [r.op for r in service.requests]
    assert order.index(Op.DELETE) > max(i for i, op in enumerate(order) if op is Op.POST)

    before = len(service.requests)
    again = await drive(rows, service, planner=_sync(prune=True))
    assert Counter(r.op for r in service.requests[before:]) == {Op.LIST: 1}
    assert again.ledger.tally.action(Action.UNCHANGED) == 40


async def test_a_dry_run_reads_and_sends_no_write() -> None:
    service = _seeded(40)
    rows = records(_inventory(range(1, 26)) + _inventory(range(41, 46)))
    ran = await drive(rows, service, planner=_sync(prune=True, dry_run=True))
    assert {r.op for r in service.requests} == {Op.LIST}
    tally = ran.ledger.tally
    assert (tally[Outcome.SUCCEEDED], tally[Outcome.PENDING]) == (25, 5)
    assert tally.action(Action.TO_CREATE) == 5
    assert ran.ledger.fates[Fate.TO_REMOVE] == 15
    assert len(service.members(CHANNEL)) == 40


async def test_without_prune_extras_are_kept_and_said_so() -> None:
    service = _seeded(10)
    ran = await drive(records(_inventory(range(1, 6))), service, planner=_sync())
    assert ran.ledger.fates[Fate.KEPT] == 5
    assert len(service.members(CHANNEL)) == 10


async def test_the_max_prune_guard_keeps_a_channel_whole() -> None:
    service = _seeded(10)
    sync = _sync(prune=True, max_prune=50.0)
    ran = await drive(records(_inventory(range(1, 4))), service, planner=sync)
    assert ran.ledger.fates[Fate.KEPT] == 7
    assert ran.ledger.fates[Fate.REMOVED] == 0
    assert ran.driver.planner.guarded == 7  # type: ignore[attr-defined]
    assert len(service.members(CHANNEL)) == 10


async def test_a_channel_with_an_invalid_row_is_never_pruned() -> None:
    service = _seeded(10)
    rows = [*_inventory(range(1, 9)), row("c1", "10.0.0.300")]  # not an address
    ran = await drive(records(rows), service, planner=_sync(prune=True))
    assert ran.ledger.fates[Fate.KEPT] == 2
    assert len(service.members(CHANNEL)) == 10


async def test_an_invalid_row_with_no_channel_keeps_every_channel_whole() -> None:
    service = _seeded(10)
    rows = [*_inventory(range(1, 9)), row("bad/id", "10.0.0.1")]
    ran = await drive(records(rows), service, planner=_sync(prune=True))
    assert ran.ledger.fates[Fate.KEPT] == 2


async def test_a_full_channel_makes_room_first_then_adds() -> None:
    # The channel holds 10, all of which the inventory replaces with 10 others.
    service = _seeded(10)
    service.state.channels[CHANNEL].max_members = 10
    rows = records(_inventory(range(11, 21)))
    ran = await drive(rows, service, planner=_sync(prune=True, max_prune=100.0))
    assert ran.ledger.tally.action(Action.CREATED) == 10
    assert ran.ledger.fates[Fate.REMOVED] == 10
    assert sorted(str(m["host"]) for m in service.members(CHANNEL)) == sorted(
        _host(n) for n in range(11, 21)
    )


async def test_channels_the_inventory_does_not_name_are_never_read() -> None:
    service = _seeded(5, channel=("p", "i", "other"))
    service.state.add_channel(CHANNEL)
    await drive(records(_inventory(range(1, 3))), service, planner=_sync(prune=True))
    assert all("/other/" not in r.path for r in service.requests)
    assert len(service.members(("p", "i", "other"))) == 5


async def test_paging_reads_every_live_member() -> None:
    service = _seeded(1200)
    ran = await drive(records(_inventory(range(1, 1201))), service, planner=_sync(prune=True))
    assert Counter(r.op for r in service.requests) == {Op.LIST: 3}
    assert ran.ledger.tally.action(Action.UNCHANGED) == 1200
