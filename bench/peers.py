"""The clients the worker is compared with, each run as its own process by the harness.

    python -m bench.peers throttle URL --rate-limit L --period P --requests N --members M
    python -m bench.peers naive URL --members N --seconds S
    python -m bench.peers pool URL --members N --seconds S [--threads 16] [--batch 100]

``throttle``: aiohttp posts paced by asyncio-throttle's ``Throttler(L, P)``, no retries.
``naive``: a sequential aiohttp loop, one member per request, no retries.
``pool``: a thread pool posting batches with blocking ``http.client`` and no client-side
rate limit; a 429 is retried after its Retry-After, up to five tries, as an SDK would.

Each stops after its work or ``--seconds`` and prints one JSON line: requests sent,
answers by status, members landed, elapsed seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp
from asyncio_throttle.throttler import Throttler

from bench.emulator_throughput import bodies
from bench.procs import TOKEN

HEADERS = {"X-Auth-Token": TOKEN, "Content-Type": "application/json"}
MAX_TRIES = 5


@dataclass(slots=True)
class Tally:
    by_status: Counter[int] = field(default_factory=Counter)
    landed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int, members: int) -> None:
        with self.lock:
            self.by_status[status] += 1
            if status == 201:
                self.landed += members

    def report(self, elapsed: float) -> str:
        return json.dumps(
            {
                "sent": sum(self.by_status.values()),
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "landed_members": self.landed,
                "elapsed": elapsed,
            }
        )


async def throttled(url: str, args: argparse.Namespace, tally: Tally) -> None:
    work: Iterator[tuple[str, bytes]] = iter(bodies(args.requests, args.members, args.channels))
    throttler = Throttler(rate_limit=args.rate_limit, period=args.period)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=HEADERS) as session:

        async def worker() -> None:
            for path, body in work:
                async with throttler, session.post(path, data=body) as response:
                    await response.read()
                    tally.count(response.status, args.members)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))


async def naive(url: str, args: argparse.Namespace, tally: Tally) -> None:
    deadline = time.monotonic() + args.seconds
    async with aiohttp.ClientSession(url, headers=HEADERS) as session:
        for path, body in bodies(args.members, 1, args.channels):
            async with session.post(path, data=body) as response:
                await response.read()
                tally.count(response.status, 1)
            if time.monotonic() > deadline:
                break


def pool(url: str, args: argparse.Namespace, tally: Tally) -> None:
    deadline = time.monotonic() + args.seconds
    work = iter(bodies(args.members // args.batch, args.batch, args.channels))
    target = urllib.parse.urlsplit(url)
    local = threading.local()

    def post(path: str, body: bytes) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        for _ in range(MAX_TRIES):
            local.conn.request("POST", path, body=body, headers=HEADERS)
            response = local.conn.getresponse()
            response.read()
            tally.count(response.status, args.batch)
            if response.status != 429:
                return
            time.sleep(float(response.headers.get("Retry-After") or 1))

    def thread() -> None:
        for path, body in work:  # a shared iterator: next() under the GIL hands out each once
            if time.monotonic() > deadline:
                return
            post(path, body)

    with ThreadPoolExecutor(args.threads) as executor:
        for future in [executor.submit(thread) for _ in range(args.threads)]:
            future.result()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("client", choices=("throttle", "naive", "pool"))
    parser.add_argument("url")
    parser.add_argument("--rate-limit", type=int, default=1)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--members", type=int, default=10, help="per request, or in all")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    return parser.parse_args()


def main() -> None:
    args = parse()
    tally = Tally()
    started = time.perf_counter()
    if args.client == "throttle":
        asyncio.run(throttled(args.url, args, tally))
    elif args.client == "naive":
        asyncio.run(naive(args.url, args, tally))
    else:
        pool(args.url, args, tally)
    print(tally.report(time.perf_counter() - started))


if __name__ == "__main__":
    main()
