"""First-wins deduplication of addresses per channel."""

from __future__ import annotations

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

    def __len__(self) -> int:
        return self._size
