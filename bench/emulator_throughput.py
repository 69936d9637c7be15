"""How many add-or-update POSTs a second the emulator serves over loopback.

Starts ``vpc-members emulator --port 0 --auto-create`` as a subprocess (bench.procs), drives
it from this process with many keep-alive connections and pre-serialised bodies of fresh
addresses, and prints POSTs/s, members/s and the emulator's CPU use. The client shares the
machine, so the figure is a floor for the emulator alone.

    .venv/bin/python -m bench.emulator_throughput [--posts 10000] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import orjson

from bench.procs import TOKEN, emulator

PROJECT = "bench"


def bodies(posts: int, size: int, channels: int) -> list[tuple[str, bytes]]:
    """(path, body) per POST: each body has ``size`` members at addresses never used
    before, so every member is a creation, the emulator's most expensive case."""
    result = []
    serial = 0
    for n in range(posts):
        members = []
        for _ in range(size):
            serial += 1
            members.append(
                {
                    "host": f"10.{serial >> 16 & 255}.{serial >> 8 & 255}.{serial & 255}",
                    "port": 8080,
                    "weight": 10,
                    "member_group_name": f"group{serial % 4}",
                }
            )
        path = f"/v2/{PROJECT}/apic/instances/inst{n % 4}/vpc-channels/chan{n % channels}/members"
        result.append((path, orjson.dumps({"members": members})))
    return result


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(url: str, work: list[tuple[str, bytes]], connections: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    items: Iterator[tuple[str, bytes]] = iter(work)
    headers = {"X-Auth-Token": TOKEN, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

        async def worker() -> None:
            for path, body in items:
                async with session.post(path, data=body) as response:
                    await response.read()
                    statuses[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


@dataclass(frozen=True, slots=True)
class Throughput:
    posts: int
    members: int
    elapsed: float
    emulator_cpu: float
    statuses: dict[int, int]

    @property
    def per_second(self) -> float:
        return self.posts / self.elapsed


def measure(posts: int, warmup: int, members: int, connections: int, channels: int) -> Throughput:
    """Time ``posts`` POSTs of ``members`` members each after ``warmup`` untimed ones."""
    work = bodies(warmup + posts, members, channels)
    with emulator() as server:
        asyncio.run(drive(server.url, work[:warmup], connections))
        cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
        statuses = asyncio.run(drive(server.url, work[warmup:], connections))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before
    return Throughput(sum(statuses.values()), members, elapsed, cpu, dict(statuses))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=10000, help="timed POSTs (%(default)s)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed POSTs first")
    parser.add_argument("--members", type=int, default=100, help="members per POST")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--channels", type=int, default=200, help="channels to spread over")
    args = parser.parse_args()

    result = measure(args.posts, args.warmup, args.members, args.connections, args.channels)
    posts, elapsed, cpu = result.posts, result.elapsed, result.emulator_cpu
    print(f"POSTs:         {posts} in {elapsed:.2f} s, statuses {result.statuses}")
    print(f"POSTs/s:       {result.per_second:,.0f}")
    print(f"members/s:     {posts * args.members / elapsed:,.0f}")
    print(f"emulator CPU:  {cpu / elapsed:.0%} of one core, {cpu / posts * 1e6:,.0f} µs per POST")
    return 0 if result.statuses.keys() == {201} else 1


if __name__ == "__main__":
    sys.exit(main())
