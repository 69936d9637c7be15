"""Intake and the tallies: every record gets exactly one fate, and the counts add up."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.intake import AlreadyLanded, Entry, Intake, OtherShard
from worker.inventory import Record
from worker.members import Channel, FieldError, channel_from_fields, member_from_fields
from worker.outcomes import Outcome, RequestStats, Tally
from worker.reports import landed_key
from worker.shards import Shard

DEFAULTS = {"project_id": "p", "instance_id": "i"}
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "vpc_channel_id": st.sampled_from(["c1", "c2", "", "bad/id"]),
        "host": st.sampled_from(["10.0.0.1", "10.0.0.01", "H.example.", "h.example", "::1"]),
        "ecs_id": st.sampled_from(["e1", "e 1"]),
        "port": st.sampled_from([80, "80", "x", 70000]),
    },
)
RECORD = st.builds(
    Record,
    source=st.sampled_from(["a.csv", "b.ndjson"]),
    line=st.integers(1, 1 << 39),
    fields=FIELDS,
    problem=st.none() | st.just("is not valid UTF-8"),
)


def _key(record: Record) -> tuple[Channel, str] | None:
    """The (channel, address) a record claims, or None when it is invalid."""
    if record.problem is not None:
        return None
    channel = channel_from_fields(record.fields, DEFAULTS)
    member = member_from_fields(record.fields)
    if isinstance(channel, FieldError) or isinstance(member, FieldError):
        return None
    return channel, member.address


@given(st.lists(RECORD, max_size=30), st.data())
def test_every_record_gets_exactly_one_fate(records: list[Record], data: st.DataObject) -> None:
    keyed = [(r, _key(r)) for r in records]
    places = [landed_key(r.source, r.line, key[0], key[1]) for r, key in keyed if key is not None]
    landed = data.draw(st.sets(st.sampled_from(places))) if places else set()
    intake = Intake(DEFAULTS, landed)
    tally = Tally()
    first: dict[tuple[Channel, str], Record] = {}
    for record in records:
        fate = intake.process(record)
        key = _key(record)
        winner = first.setdefault(key, record) if key is not None else None
        if isinstance(fate, AlreadyLanded):
            assert winner is record
            assert key is not None and (fate.channel, fate.address) == key
            assert landed_key(record.source, record.line, *key) in landed
            tally.add(Outcome.SUCCEEDED)
        elif isinstance(fate, Entry):
            assert winner is record
            assert landed_key(record.source, record.line, fate.channel, fate.address) not in landed
            assert (fate.channel, fate.address) == key
            assert fate.row.member is not None
            assert orjson.loads(fate.body) == fate.row.member.to_json()
            tally.add(Outcome.SUCCEEDED)
        else:
            assert isinstance(fate, tuple)
            row, result = fate
            assert (row.source, row.line, row.fields) == (record.source, record.line, record.fields)
            if key is None:
                assert result.outcome is Outcome.INVALID
                assert result.error_code.startswith("invalid.")
            else:
                assert winner is not None
                assert winner is not record
                assert result.outcome is Outcome.DUPLICATE
                assert result.duplicate_of == f"{winner.source}:{winner.line}"
            tally.add(result.outcome)
    assert tally.total == len(records)
    assert intake.distinct == len(first)


@pytest.mark.parametrize(
    ("fields", "problem", "code", "message"),
    [
        ({"host": "10.0.0.1"}, "is a JSON array, not an object", "invalid.row", "row is a JSON"),
        ({}, None, "invalid.missing", "vpc_channel_id: is required"),
        ({"vpc_channel_id": "c/../x"}, None, "invalid.malformed", "vpc_channel_id"),
        (
            {"vpc_channel_id": "c", "host": "10.0.0.1", "weight": "1.0"},
            None,
            "invalid.type",
            "weight",
        ),
        ({"vpc_channel_id": "c", "host": "10.0.0.1", "port": -1}, None, "invalid.range", "port"),
    ],
)
def test_refusals_name_field_and_reason(
    fields: dict[str, object], problem: str | None, code: str, message: str
) -> None:
    fate = Intake(DEFAULTS).process(Record("a.csv", 7, fields, problem))
    assert isinstance(fate, tuple)
    row, result = fate
    assert (result.outcome, result.error_code) == (Outcome.INVALID, code)
    assert message in result.error_msg
    assert (row.source, row.line) == ("a.csv", 7)


def test_duplicates_across_inputs_name_the_winner_and_landed_rows_still_claim() -> None:
    channel = Channel("p", "i", "c")
    intake = Intake(DEFAULTS, landed={landed_key("a.csv", 2, channel, "2001:db8::1")})
    rows = [
        Record("a.csv", 2, {"vpc_channel_id": "c", "host": "2001:DB8::1"}),
        Record("b.ndjson", 9, {"vpc_channel_id": "c", "host": "2001:db8:0::1"}),
        Record("b.ndjson", 10, {"vpc_channel_id": "other", "host": "2001:db8::1"}),
    ]
    first, second, third = (intake.process(r) for r in rows)
    assert first == AlreadyLanded(channel, "2001:db8::1")
    assert isinstance(second, tuple)
    assert (second[1].outcome, second[1].duplicate_of) == (Outcome.DUPLICATE, "a.csv:2")
    assert isinstance(third, Entry)
    assert (third.channel, third.address) == (Channel("p", "i", "other"), "2001:db8::1")
    assert intake.distinct == 2


@given(st.lists(st.sampled_from(list(Outcome))))
def test_tally_outcomes_add_up_to_total(outcomes: list[Outcome]) -> None:
    tally = Tally()
    for outcome in outcomes:
        tally.add(outcome)
    counts = tally.as_dict()
    assert counts["total"] == tally.total == len(outcomes)
    assert sum(n for name, n in counts.items() if name != "total") == tally.total
    not_landed = {Outcome.REJECTED, Outcome.FAILED, Outcome.ABORTED}
    assert tally.valid_rows_landed == all(outcome not in not_landed for outcome in outcomes)


def test_request_stats_count_every_request_once() -> None:
    stats = RequestStats()
    for op, status, retry in [
        ("post", "201", False),
        ("post", "429", False),
        ("post", "429", True),
        ("list", "timeout", True),
    ]:
        stats.count(op, status, retry=retry)
    assert stats.as_dict() == {
        "sent": 4,
        "retried": 2,
        "split": 0,
        "by_status": {"201": 1, "429": 2, "timeout": 1},
        "by_operation": {"list": 1, "post": 3},
    }


def test_a_shard_passes_over_the_rows_of_channels_it_does_not_own() -> None:
    shards = [Intake(DEFAULTS, shard=Shard(index, 3)) for index in range(3)]
    records = [
        Record("a.csv", n, {"vpc_channel_id": f"c{n % 17}", "host": "10.0.0.1"})
        for n in range(2, 60)
    ]
    owners = []
    for record in records:
        fates = [intake.process(record) for intake in shards]
        owners.append([i for i, fate in enumerate(fates) if not isinstance(fate, OtherShard)])
    # Every row has exactly one owner, and every row of a channel has the same one.
    assert all(len(owner) == 1 for owner in owners)
    by_channel: dict[object, set[int]] = {}
    for record, owner in zip(records, owners, strict=True):
        by_channel.setdefault(record.fields["vpc_channel_id"], set()).add(owner[0])
    assert all(len(found) == 1 for found in by_channel.values())
    assert {owner[0] for owner in owners} == {0, 1, 2}
    # A row with no readable channel belongs to shard 0.
    broken = Record("a.csv", 99, {"vpc_channel_id": "bad/id", "host": "10.0.0.1"})
    assert [isinstance(i.process(broken), OtherShard) for i in shards] == [False, True, True]


def test_an_id_that_is_not_text_is_refused_quoting_its_own_value() -> None:
    # 1, 1.0 and true are one key to a dict: a refusal cached for one quoted it for all.
    intake = Intake({})
    said = []
    for value in (1, True, 1.0):
        found = intake.channel({"project_id": value, "instance_id": "i", "vpc_channel_id": "c"})
        assert isinstance(found, FieldError)
        said.append(str(found))
    assert said[0].endswith("got 1") and said[1].endswith("got True")
    assert said[2].endswith("got 1.0")
