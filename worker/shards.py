"""Splitting one inventory between processes by channel: which rows a shard owns. Pure.

A channel belongs to shard ``h mod N``, where ``h`` is a hash of its identity that is the
same in every process, machine and Python version (BLAKE2b, not Python's salted
``hash()``), so N processes given the same inventory and ``--shard 0/N`` ... ``N-1/N``
split it with no coordinator. Dedupe stays correct, since it is per channel and a channel
lives in one shard. Rows with no readable channel belong to shard 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from worker.config import check_shard
from worker.members import Channel

AUTO: Final = "auto"
INDEX_VARIABLE: Final = "JOB_COMPLETION_INDEX"


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count}: the index must be 0..{self.count - 1}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, channel: Channel | None) -> bool:
        return shard_of(channel, self.count) == self.index


def shard_of(channel: Channel | None, count: int) -> int:
    """The shard of ``count`` that a channel (None: no readable channel) belongs to."""
    if channel is None or count == 1:
        return 0
    key = "\x1f".join(channel).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) % count


def parse_shard(text: str, env: Mapping[str, str]) -> Shard:
    """``I/N``, or ``auto/N`` with I from ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed
    Job); raises ValueError with a message for a person."""
    index_text, _, count_text = check_shard(text).partition("/")
    count = int(count_text)
    if index_text == AUTO:
        index_text = env.get(INDEX_VARIABLE, "")
        if not index_text.strip().isdigit():
            raise ValueError(
                f"--shard auto/{count} takes the index from {INDEX_VARIABLE}, "
                f"which is {'unset' if not index_text else repr(index_text)}"
            )
    return Shard(int(index_text), count)
