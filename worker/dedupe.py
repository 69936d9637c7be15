"""First-wins deduplication of addresses per channel."""

from __future__ import annotations

from collections.abc import Sequence

from worker.members import Channel


class FirstWins:
    """Remembers, per channel, which row first claimed each address.

    ``claim`` returns None when the row is the first with that address in that channel (it
    wins), else the reference of the row that won. References are opaque to this class;
    memory grows with the number of distinct (channel, address) pairs and nothing else.
    """

    __slots__ = ("_channels", "_size")

    def __init__(self) -> None:
        self._channels: dict[Channel, dict[str, int]] = {}
        self._size = 0

    def claim(self, channel: Channel, address: str, ref: int) -> int | None:
        seen = self._channels.get(channel)
        if seen is None:
            seen = self._channels[channel] = {}
        winner = seen.get(address)
        if winner is None:
            seen[address] = ref
            self._size += 1
        return winner

    def claim_all(self, runs: Sequence[tuple[Channel, Sequence[str], list[int]]]) -> bool:
        """Claim the addresses of every run (one channel's, with their references), as
        ``claim`` would one by one, when they all win: none is claimed yet, nor given
        twice in its run. False, claiming nothing, when one is not. A reference is one
        row's own: no two addresses claimed share one."""
        channels = self._channels
        done: list[tuple[dict[str, int], Sequence[str], list[int], list[int]]] = []
        for channel, addresses, refs in runs:
            seen = channels.get(channel)
            if seen is None:
                seen = channels[channel] = {}
            # One lookup an address, where a check before claiming would cost two: each
            # gets back its own reference when it wins, the winner's when it does not.
            got = list(map(seen.setdefault, addresses, refs))
            done.append((seen, addresses, refs, got))
            if got != refs:
                # Take back what this call claimed (what got its own reference back), and
                # only that: the claims are then as they were.
                for claimed, given, own, back in done:
                    for address, ref, winner in zip(given, own, back, strict=True):
                        if winner is ref:
                            del claimed[address]
                return False
        self._size += sum(len(addresses) for _, addresses, _ in runs)
        return True

    def __len__(self) -> int:
        return self._size
