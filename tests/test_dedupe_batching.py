"""First-wins dedupe and the batcher: nothing lost, nothing doubled, every cap kept."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.batching import ENVELOPE_BYTES, Batch, Batcher
from worker.dedupe import FirstWins
from worker.members import Channel, Member
from worker.protocol import encode_body

CHANNELS = [Channel("p", "i", f"c{n}") for n in range(3)]
CHANNEL = st.sampled_from(CHANNELS)


@given(st.lists(st.tuples(CHANNEL, st.sampled_from(["10.0.0.1", "10.0.0.2", "h.example"]))))
def test_first_claim_of_an_address_in_a_channel_wins(claims: list[tuple[Channel, str]]) -> None:
    dedupe = FirstWins()
    first: dict[tuple[Channel, str], int] = {}
    for ref, (channel, address) in enumerate(claims):
        winner = dedupe.claim(channel, address, ref)
        expected = first.setdefault((channel, address), ref)
        assert winner == (None if expected == ref else expected)
    assert len(dedupe) == len(first)


ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "h.example"]


@given(
    st.lists(st.tuples(CHANNEL, st.sampled_from(ADDRESSES))),
    st.lists(st.tuples(CHANNEL, st.lists(st.sampled_from(ADDRESSES), max_size=5)), max_size=4),
)
def test_claiming_runs_at_once_is_claiming_them_one_by_one_when_all_win_else_nothing(
    before: list[tuple[Channel, str]], runs: list[tuple[Channel, list[str]]]
) -> None:
    at_once, one_by_one = FirstWins(), FirstWins()
    for ref, (channel, address) in enumerate(before):
        at_once.claim(channel, address, ref)
        one_by_one.claim(channel, address, ref)
    claimed = len(one_by_one)
    numbered: list[tuple[Channel, list[str], list[int]]] = []
    ref = len(before)
    for channel, addresses in runs:
        numbered.append((channel, addresses, list(range(ref, ref + len(addresses)))))
        ref += len(addresses)
    wins = [
        one_by_one.claim(channel, address, n) is None
        for channel, addresses, refs in numbered
        for address, n in zip(addresses, refs, strict=True)
    ]
    if all(wins):
        assert at_once.claim_all(numbered)
        assert len(at_once) == len(one_by_one)
    else:
        # Nothing claimed: the state before the runs, and the one-by-one claims after it.
        assert not at_once.claim_all(numbered)
        assert len(at_once) == claimed
        for channel, addresses, refs in numbered:
            for address, n in zip(addresses, refs, strict=True):
                at_once.claim(channel, address, n)
    for channel in CHANNELS:
        for address in ADDRESSES:
            assert at_once.claim(channel, address, -1) == one_by_one.claim(channel, address, -1)


MEMBER = st.builds(
    Member,
    host=st.ip_addresses().map(str),
    weight=st.none() | st.integers(0, 10000),
    member_group_name=st.none() | st.from_regex(r"[a-z0-9]{1,60}", fullmatch=True),
)


@given(
    st.lists(st.tuples(CHANNEL, MEMBER), max_size=40),
    st.integers(1, 6),
    st.integers(1, 400),
)
def test_batches_cover_every_item_once_within_the_caps(
    feeds: list[tuple[Channel, Member]], max_items: int, max_bytes: int
) -> None:
    batcher: Batcher[tuple[int, bytes]] = Batcher(max_items, max_bytes)
    batches: list[Batch[tuple[int, bytes]]] = []
    for index, (channel, member) in enumerate(feeds):
        body = orjson.dumps(member.to_json())
        done = batcher.feed(channel, (index, body), len(body))
        assert len(done) <= 2
        batches.extend(done)
        assert batcher.pending == index + 1 - sum(len(b.items) for b in batches)
    tail = batcher.flush()
    # flush hands out partial batches in the order they were begun.
    assert [b.items[0][0] for b in tail] == sorted(b.items[0][0] for b in tail)
    batches.extend(tail)
    assert batcher.pending == 0
    assert batcher.flush() == []

    seen = sorted(index for batch in batches for index, _ in batch.items)
    assert seen == list(range(len(feeds)))
    for batch in batches:
        indexes = [index for index, _ in batch.items]
        assert indexes == sorted(indexes)
        assert {feeds[i][0] for i in indexes} == {batch.channel}
        assert 1 <= len(batch.items) <= max_items
        assert batch.body_bytes == len(encode_body(body for _, body in batch.items))
        if len(batch.items) > 1:
            assert batch.body_bytes <= max_bytes
    for channel in CHANNELS:
        # Batches of a channel, in the order they were handed out, keep its input order.
        order = [i for b in batches if b.channel == channel for i, _ in b.items]
        assert order == sorted(order)


def test_an_item_too_big_alone_travels_alone() -> None:
    batcher: Batcher[str] = Batcher(max_items=10, max_bytes=50)
    channel = CHANNELS[0]
    assert batcher.feed(channel, "small", 10) == ()
    (before,) = batcher.feed(channel, "huge", 100)
    assert before.items == ["small"]
    (huge,) = batcher.feed(channel, "next", 10)
    assert (huge.items, huge.body_bytes) == (["huge"], ENVELOPE_BYTES + 100)
    assert [b.items for b in batcher.flush()] == [["next"]]


@pytest.mark.parametrize(("max_items", "max_bytes"), [(0, 10), (1, 0), (-1, -1)])
def test_batch_limits_must_be_positive(max_items: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        Batcher[str](max_items, max_bytes)
