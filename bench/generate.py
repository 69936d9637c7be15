"""Seeded inventories for tests and benchmarks, with the outcome each row must end in.

Rows are spread round-robin over ``channels`` channels. A ``dup_rate`` share repeats an
address given earlier in the same channel (written in another notation, so only canonical
comparison catches it); an ``invalid_rate`` share breaks one field. ``expected`` says, per
row, ``valid``, ``duplicate`` or ``invalid``, so a test can check the run against it.
"""

from __future__ import annotations

import csv
import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from worker.members import CHANNEL_FIELDS, MEMBER_FIELDS

COLUMNS = (*CHANNEL_FIELDS, *MEMBER_FIELDS, "cmdb_id")
PROJECT = "0b3c5e7d9f1a4b6c8d0e2f4a6b8c0d1e"


@dataclass(slots=True)
class Inventory:
    rows: list[dict[str, object]] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)


def channel_ids(count: int, instances: int = 4) -> list[tuple[str, str]]:
    return [(f"inst{i % instances:04d}", f"chan{i:06d}") for i in range(count)]


def _address(n: int, v6: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if v6:
        return ipaddress.IPv6Address(f"2001:db8::{n // 65536:x}:{n % 65536:x}")
    return ipaddress.IPv4Address(0x0A000000 + n)


def rows(
    count: int, channels: int, *, dup_rate: float = 0.0, invalid_rate: float = 0.0, seed: int = 1
) -> Inventory:
    """``count`` rows over ``channels`` channels; see the module docstring."""
    rng = random.Random(seed)
    ids = channel_ids(channels)
    inventory = Inventory()
    given: list[list[dict[str, object]]] = [[] for _ in range(channels)]
    for n in range(count):
        c = n % channels
        instance, channel = ids[c]
        roll = rng.random()
        if roll < dup_rate and given[c]:
            first = rng.choice(given[c])
            row = dict(first, weight=rng.randint(0, 10000), cmdb_id=f"CI{n}")
            address = ipaddress.ip_address(str(first["host"]))
            row["host"] = address.exploded.upper()
            inventory.rows.append(row)
            inventory.expected.append("duplicate")
            continue
        row = {
            "project_id": PROJECT,
            "instance_id": instance,
            "vpc_channel_id": channel,
            "host": str(_address(n, v6=n % 7 == 0)),
            "port": rng.randint(1, 65535),
            "weight": rng.randint(0, 10000),
            "is_backup": rng.random() < 0.1,
            "member_group_name": f"group-{rng.randint(0, 3)}",
            "status": rng.choice((1, 2)),
            "ecs_id": None,
            "ecs_name": None,
            "cmdb_id": f"CI{n}",
        }
        if dup_rate <= roll < dup_rate + invalid_rate:
            row.update(
                rng.choice(
                    (
                        {"weight": 10001},
                        {"port": -1},
                        {"host": "10.0.0.256"},
                        {"status": 3},
                        {"vpc_channel_id": "bad/channel"},
                    )
                )
            )
            inventory.rows.append(row)
            inventory.expected.append("invalid")
            continue
        given[c].append(row)
        inventory.rows.append(row)
        inventory.expected.append("valid")
    return inventory


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([csv_cell(row.get(name)) for name in COLUMNS] for row in rows)


def write_ndjson(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps({k: v for k, v in row.items() if v is not None}))
            handle.write(b"\n")


def stream_csv(path: Path, count: int, channels: int, seed: int = 1) -> None:
    """A large CSV written row by row (for benchmarks that must not hold the inventory)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([csv_cell(v) for v in values] for values in _stream(count, channels, seed))


def stream_ndjson(path: Path, count: int, channels: int, seed: int = 1) -> None:
    with path.open("wb") as handle:
        for values in _stream(count, channels, seed):
            handle.write(
                orjson.dumps({k: v for k, v in zip(COLUMNS, values, strict=True) if v is not None})
            )
            handle.write(b"\n")


def _stream(count: int, channels: int, seed: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(seed)
    ids = channel_ids(channels)
    for n in range(count):
        instance, channel = ids[n % channels]
        yield (
            PROJECT,
            instance,
            channel,
            str(_address(n, v6=False)),
            8080,
            rng.randint(0, 100),
            False,
            "group-1",
            1,
            None,
            None,
            f"CI{n}",
        )
