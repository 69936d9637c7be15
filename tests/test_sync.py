"""sync: the diff as a pure function, and the planner in-process against the service's rules."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.inprocess import (
    CHANNEL,
    Ran,
    Script,
    Service,
    build,
    drive,
    full_disk_for,
    records,
    row,
)
from worker.diff import diff, differs, kept
from worker.emulator import errors as emulator_errors
from worker.emulator.errors import ApiError
from worker.exits import ExitCode, Facts, exit_code
from worker.intake import Intake
from worker.ledger import Ledger
from worker.limits import RateLimiter
from worker.members import JSON_TYPES, Member, check_field, check_member, member_from_fields
from worker.outcomes import Action, Fate, Outcome, Result, StopReason
from worker.protocol import Kind, Op, Page, Request, Verdict, classify
from worker.reconcile import Sync
from worker.reports import ReportsUnwritable, landed_key

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


@given(
    wanted=st.builds(
        Member,
        host=st.just("10.0.0.1"),
        port=st.none() | st.integers(1, 9),
        weight=st.none() | st.integers(0, 9),
        is_backup=st.none() | st.booleans(),
        member_group_name=st.none() | st.sampled_from(["a", "b"]),
    ),
    live=st.fixed_dictionaries(
        {
            "host": st.just("10.0.0.1"),
            "port": st.integers(1, 9),
            "weight": st.integers(0, 9) | st.just(True),
            "is_backup": st.booleans(),
            "member_group_name": st.sampled_from(["", "a", "bad name"]),
            "status": st.sampled_from([1, 2, 7]),
            "ecs_id": st.just(""),
        }
    ),
)
def test_an_update_sends_what_the_inventory_gives_and_keeps_the_rest_live(
    wanted: Member, live: dict[str, object]
) -> None:
    sent = kept(wanted, live).to_json()
    # What the inventory gives is sent as it gives it...
    assert {k: v for k, v in wanted.to_json().items()} == {k: sent[k] for k in wanted.to_json()}
    # ...and applying it leaves nothing to do: the live values it carries are the live ones.
    assert not differs(wanted, {**live, **sent})
    for name in ("port", "weight", "is_backup", "member_group_name", "status"):
        if name not in wanted.to_json():
            have = live[name]
            good = have != "" and type(have) is JSON_TYPES[name] and not check_field(name, have)
            assert (sent.get(name) == have) if good else (name not in sent)
    # A live value the rules refuse (a group with a space, a status of 7, a bool weight) is
    # not carried: the update would be refused for it.
    assert check_member(Member(**sent)) is None  # type: ignore[arg-type]


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
    assert ran.driver.planner.guarded == 1  # type: ignore[attr-defined]
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


# -- the rate limit, the guards and the extras' fates, in-process ------------------------------


def _answer(op: Op, error: ApiError) -> Verdict:
    """The verdict the client would reach on the emulator's own refusal ``error``."""
    return classify(op, error.status, orjson.dumps(error.body("req-scripted")))


def _extras(reports: Path) -> list[dict[str, str]]:
    with (reports / "extras.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class _Slots(RateLimiter):
    """A pacer that counts the slots handed out."""

    def __init__(self) -> None:
        super().__init__(10_000)
        self.claimed = 0

    def delay(self) -> float:
        self.claimed += 1
        return super().delay()


async def test_list_pages_wait_for_a_slot_of_the_rate_limit_as_writes_do() -> None:
    # Two pages to read, then posts and deletes: every request, reads included, must have
    # claimed its slot before it reaches the service.
    service = _seeded(600)
    slots = _Slots()
    unpaced: list[Op] = []

    def script(request: Request, n: int) -> Verdict | None:
        if slots.claimed < n:
            unpaced.append(request.op)
        return None

    service.script = script
    ran = build(service, planner=_sync(prune=True))
    ran.driver.limiter = slots
    await ran.run(records(_inventory(range(1, 401)) + _inventory(range(601, 611))))
    assert Counter(r.op for r in service.requests)[Op.LIST] == 2
    assert Counter(r.op for r in service.requests)[Op.DELETE] == 200
    assert unpaced == []
    assert slots.claimed == len(service.requests)


async def test_a_row_refused_after_the_diff_keeps_its_channel_from_being_pruned(
    tmp_path: Path,
) -> None:
    # Live 1..10; wanted 1..8 and 11..14, so 9 and 10 are extras (20%, within --max-prune).
    # The service refuses 14, the last of the creates' batch: halving isolates it, and the
    # first half lands before the refusal is known, which must not release the deletions.
    refused = f'"{_host(14)}"'.encode()

    def script(request: Request, n: int) -> Verdict | None:
        if request.op is Op.POST and refused in request.body:
            return _answer(Op.POST, emulator_errors.invalid("weight"))
        return None

    service = _seeded(10)
    service.script = script
    rows = records(_inventory(range(1, 9)) + _inventory(range(11, 15)))
    ran = await drive(rows, service, planner=_sync(prune=True), reports=tmp_path / "r")
    assert ran.ledger.tally[Outcome.REJECTED] == 1
    assert ran.ledger.tally.action(Action.CREATED) == 3
    assert Op.DELETE not in {r.op for r in service.requests}
    assert (ran.ledger.fates[Fate.KEPT], ran.ledger.fates[Fate.REMOVED]) == (2, 0)
    extras = _extras(tmp_path / "r")
    assert sorted(r["host"] for r in extras) == sorted([_host(9), _host(10)])
    assert {r["reason"] for r in extras} == {"prune_guarded"}
    assert all("rejected (APIG.2012)" in r["reason_msg"] for r in extras)
    planner = ran.driver.planner
    assert isinstance(planner, Sync) and planner.guarded == 1
    assert exit_code(Facts(ran.ledger.tally, len(rows), guarded=planner.guarded)) != ExitCode.OK


async def test_a_channel_whose_list_page_fails_is_neither_written_nor_pruned() -> None:
    # c1's second page keeps failing; c2 is read whole and synced as usual.
    def script(request: Request, n: int) -> Verdict | None:
        if request.op is Op.LIST and "/c1/" in request.path and ("offset", "500") in request.query:
            return _answer(Op.LIST, emulator_errors.system_error())
        return None

    service = _seeded(600)
    service.state.add_channel(("p", "i", "c2")).upsert(
        [(_host(n), {"host": _host(n), "weight": 1}) for n in range(1, 11)],
        1.7e9,
    )
    service.script = script
    rows = [
        *_inventory(range(1, 301), weight=2),
        *_inventory(range(601, 611)),
        *(row("c2", _host(n)) for n in range(1, 6)),
    ]
    ran = await drive(records(rows), service, planner=_sync(prune=True), max_attempts=2)
    c1 = [r for r in service.requests if "/c1/" in r.path]
    assert {r.op for r in c1} == {Op.LIST}
    assert ran.ledger.tally[Outcome.FAILED] == 310
    assert {str(m["host"]): m["weight"] for m in service.members(CHANNEL)} == {
        _host(n): 1 for n in range(1, 601)
    }
    # The other channel is pruned as asked.
    assert ran.ledger.fates[Fate.REMOVED] == 5
    assert len(service.members(("p", "i", "c2"))) == 5


async def test_a_channel_listed_short_of_its_total_is_not_pruned(tmp_path: Path) -> None:
    # The second page says 600 but holds none: the 100 extras seen on the first page may
    # be all or none of them, so none is removed.
    def script(request: Request, n: int) -> Verdict | None:
        if request.op is Op.LIST and ("offset", "500") in request.query:
            return classify(Op.LIST, 200, b'{"total": 600, "size": 0, "members": []}')
        return None

    service = _seeded(600)
    service.script = script
    rows = records(_inventory(range(1, 401)))
    ran = await drive(rows, service, planner=_sync(prune=True), reports=tmp_path / "r")
    assert Op.DELETE not in {r.op for r in service.requests}
    assert (ran.ledger.fates[Fate.KEPT], ran.ledger.fates[Fate.REMOVED]) == (100, 0)
    assert {r["reason_msg"] for r in _extras(tmp_path / "r")} == {
        "its live members could not be read completely"
    }
    assert len(service.members(CHANNEL)) == 600


async def test_an_extra_whose_delete_fails_is_reported_failed_with_the_reason(
    tmp_path: Path,
) -> None:
    service = _seeded(10)
    stuck = next(str(m["id"]) for m in service.members(CHANNEL) if m["host"] == _host(10))

    def script(request: Request, n: int) -> Verdict | None:
        if request.op is Op.DELETE and request.path.endswith(f"/{stuck}"):
            return _answer(Op.DELETE, emulator_errors.system_error())
        return None

    service.script = script
    rows = records(_inventory(range(1, 8)))
    ran = await drive(rows, service, planner=_sync(prune=True), reports=tmp_path / "r")
    assert (ran.ledger.fates[Fate.REMOVED], ran.ledger.fates[Fate.FAILED]) == (2, 1)
    extras = {r["host"]: r for r in _extras(tmp_path / "r")}
    failed = extras[_host(10)]
    assert (failed["fate"], failed["member_id"]) == ("failed", stuck)
    assert (failed["reason"], failed["http_status"]) == ("APIG.9999", "500")
    assert failed["reason_msg"] == "System error" and failed["attempts"] == "5"
    assert {extras[_host(n)]["fate"] for n in (8, 9)} == {"removed"}
    # Every input row landed, yet the channel still holds a member it should not: not "in sync".
    assert ran.ledger.tally.valid_rows_landed
    failed_removals = ran.ledger.fates[Fate.FAILED]
    facts = Facts(ran.ledger.tally, len(rows), failed_removals=failed_removals)
    assert exit_code(facts) is ExitCode.ROWS_FAILED


async def test_a_resumed_prune_whose_channel_cannot_be_listed_is_guarded() -> None:
    # Every row landed before the stop, so none is left to fail: the unread channel must
    # still keep the run from exiting 0.
    service = _seeded(10)
    service.script = lambda request, n: (
        _answer(Op.LIST, emulator_errors.system_error()) if request.op is Op.LIST else None
    )
    rows = records(_inventory(range(1, 6)))
    landed = frozenset(landed_key("in.csv", r.line, CHANNEL, str(r.fields["host"])) for r in rows)
    ran = await build(service, planner=_sync(prune=True), landed=landed, max_attempts=1).run(rows)
    planner = ran.driver.planner
    assert isinstance(planner, Sync) and planner.guarded == 1
    assert "could not be read" in planner.channels[CHANNEL].guard
    assert Op.DELETE not in {r.op for r in service.requests}
    facts = Facts(ran.ledger.tally, len(rows), guarded=planner.guarded)
    assert exit_code(facts) == ExitCode.PRUNE_GUARDED


async def test_removals_that_applied_without_saying_so_are_reported_removed_once_resumed(
    tmp_path: Path,
) -> None:
    # Each removal answers 500: all but one after they applied. One attempt each: the first
    # pass reports them failed, and the resumed pass, listing the channel, finds out.
    service = _seeded(10)
    still = _host(10)

    def script(request: Request, n: int) -> Verdict | None:
        if request.op is Op.DELETE:
            member_id = request.path.rsplit("/", 1)[1]
            channel = service.state.channel(CHANNEL)
            if next(m["host"] for m in channel if m["id"] == member_id) != still:
                channel.delete(member_id)
            return _answer(Op.DELETE, emulator_errors.system_error())
        return None

    service.script = script
    rows = records(_inventory(range(1, 6)))
    sync = _sync(prune=True, max_prune=100.0)
    first = await build(service, planner=sync, reports=tmp_path, max_attempts=1).run(rows)
    assert first.ledger.fates[Fate.FAILED] == 5
    service.script = None
    landed = frozenset(landed_key("in.csv", r.line, CHANNEL, str(r.fields["host"])) for r in rows)
    again = await build(service, planner=sync, reports=tmp_path, landed=landed, resume=True).run(
        rows
    )
    extras = _extras(tmp_path)
    assert sorted(r["host"] for r in extras) == sorted(_host(n) for n in range(6, 11))
    assert {r["fate"] for r in extras} == {"removed"}
    reasons = {r["host"]: r["reason"] for r in extras}
    assert reasons.pop(still) == ""  # still live: removed now
    assert set(reasons.values()) == {"applied_before"}
    assert again.ledger.fates[Fate.REMOVED] == 5 and again.ledger.fates[Fate.FAILED] == 0
    assert len(service.members(CHANNEL)) == 5


async def _failed_removals_resumed(
    directory: Path, listing: Callable[[Service], Script], **options: object
) -> tuple[list[str], Ran]:
    """Extras 5..8 of a channel whose removals all answered 500 without applying (the
    first pass: extras.csv's lines), then the pass resumed with LIST answered by
    ``listing`` of the service."""
    service = _seeded(8)
    service.script = lambda request, n: (
        _answer(Op.DELETE, emulator_errors.system_error()) if request.op is Op.DELETE else None
    )
    rows = records(_inventory(range(1, 5)))
    sync = _sync(prune=True, max_prune=100.0)
    await build(service, planner=sync, reports=directory, max_attempts=1).run(rows)
    before = (directory / "extras.csv").read_text().splitlines()
    service.script = listing(service)
    landed = frozenset(landed_key("in.csv", r.line, CHANNEL, str(r.fields["host"])) for r in rows)
    resumed = build(service, planner=sync, reports=directory, landed=landed, resume=True, **options)
    return before, await resumed.run(rows)


async def test_unsure_removals_of_a_channel_not_listed_again_are_kept_as_written(
    tmp_path: Path,
) -> None:
    def refused(service: Service) -> Script:
        return lambda request, n: (
            _answer(Op.LIST, emulator_errors.system_error()) if request.op is Op.LIST else None
        )

    before, again = await _failed_removals_resumed(tmp_path, refused, max_attempts=1)
    after = (tmp_path / "extras.csv").read_text().splitlines()
    assert len(before) == 5 and sorted(after) == sorted(before)
    assert again.ledger.fates[Fate.FAILED] == 4


async def test_unsure_removals_are_not_taken_for_done_from_a_listing_not_whole(
    tmp_path: Path,
) -> None:
    # The service says 8 members and gives 6, then none: the two left out are not gone.
    def partial(service: Service) -> Script:
        def answer(request: Request, n: int) -> Verdict | None:
            if request.op is not Op.LIST:
                return None
            first = dict(request.query)["offset"] == "0"
            members = [dict(m) for m in service.state.channel(CHANNEL)][:6] if first else []
            return Verdict(Kind.OK, 200, payload=Page(8, members))

        return answer

    before, again = await _failed_removals_resumed(tmp_path, partial)
    # Listed: extras again, kept by the guard. Left out: as they were. One row each.
    extras = _extras(tmp_path)
    fates = {r["host"]: r["fate"] for r in extras}
    assert len(extras) == len(fates) == 4
    assert fates == {_host(5): "kept", _host(6): "kept", _host(7): "failed", _host(8): "failed"}
    left_out = {line for line in before if f",{_host(7)}," in line or f",{_host(8)}," in line}
    assert len(left_out) == 2
    assert left_out <= set((tmp_path / "extras.csv").read_text().splitlines())
    assert again.ledger.fates[Fate.REMOVED] == 0
    assert len(again.service.members(CHANNEL)) == 8


async def test_a_channel_left_when_the_run_stops_is_not_in_sync() -> None:
    # Stopped (a signal) while its listing is answered: abandoned, never diffed.
    service = _seeded(4)
    built = build(service, planner=_sync(prune=True))

    def stop_at_the_first(request: Request, n: int) -> Verdict | None:
        built.driver.interrupt(StopReason.INTERRUPTED)
        return None

    service.script = stop_at_the_first
    ran = await built.run(records(_inventory(range(1, 3))))
    planner = ran.driver.planner
    assert isinstance(planner, Sync) and planner.channels[CHANNEL].failed


async def test_a_listing_not_whole_is_a_guard_even_when_it_shows_no_extra() -> None:
    service = _seeded(4)

    def none_given(request: Request, n: int) -> Verdict | None:
        if request.op is Op.LIST:  # says 4 members, gives none
            return Verdict(Kind.OK, 200, payload=Page(4, []))
        return None

    service.script = none_given
    ran = await drive(records(_inventory(range(1, 3))), service, planner=_sync(prune=True))
    planner = ran.driver.planner
    assert isinstance(planner, Sync) and planner.guarded == 1
    assert "could not be read completely" in planner.channels[CHANNEL].guard
    assert Op.DELETE not in {r.op for r in service.requests}


async def test_a_removal_has_its_row_on_disk_before_it_is_sent_and_one_row_at_the_end(
    tmp_path: Path,
) -> None:
    # What a kill -9 with the removal in flight would leave: the row, which a resume
    # settles by listing the channel. At the end, the member's one row is its fate.
    service = _seeded(6)
    seen: list[str] = []

    def check(request: Request, n: int) -> Verdict | None:
        if request.op is Op.DELETE:
            member_id = request.path.rsplit("/", 1)[1]
            on_disk = _extras(tmp_path)
            mine = [r for r in on_disk if r["member_id"] == member_id]
            seen.extend(r["reason"] for r in mine)
        return None

    service.script = check
    rows = records(_inventory(range(1, 4)))
    ran = await build(service, planner=_sync(prune=True, max_prune=100.0), reports=tmp_path).run(
        rows
    )
    assert seen == ["removal_sent"] * 3
    extras = _extras(tmp_path)
    assert sorted(r["host"] for r in extras) == sorted(_host(n) for n in range(4, 7))
    assert {(r["fate"], r["reason"]) for r in extras} == {("removed", "")}
    assert ran.ledger.fates[Fate.REMOVED] == 3 and ran.ledger.fates[Fate.KEPT] == 0


async def test_a_removal_whose_journal_row_cannot_be_written_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that fills as the first removal's row is written: the run stops (as the
    # runner stops it for unwritable reports), and that removal never goes out.
    service = _seeded(6)
    built = build(service, planner=_sync(prune=True, max_prune=100.0), reports=tmp_path)

    def stop(error: ReportsUnwritable) -> None:
        refused = Result(Outcome.ABORTED, error_code="reports_unwritable", error_msg=str(error))
        built.driver.stop(StopReason.REPORTS_UNWRITABLE, refused)

    built.ledger.on_broken = stop
    full_disk_for(monkeypatch, "extras.csv")
    await built.run(records(_inventory(range(1, 4))))
    assert Op.DELETE not in {r.op for r in service.requests}
    assert len(service.members(CHANNEL)) == 6
