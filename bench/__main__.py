"""``make bench``: every target (issues 5, 11, 13 and 14) with its figure, the baseline
measured in the same run, and pass/short, as one table and bench/results.json.

    .venv/bin/python -m bench            # full: about 5 minutes
    .venv/bin/python -m bench --quick    # smaller inputs: under a minute
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import emulator_throughput, landing, local, rate, sync, throughput
from bench.report import INFO, Row, save, show, verdict


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes of one mode. ``memory_sizes`` are tried largest first against ``memory_budget``
    seconds of ``plan`` at the rate measured over ``local_rows``."""

    rate_seconds: float
    landing_members: int
    naive_members: int
    pool_members: int
    peer_cap: float
    local_rows: int
    memory_sizes: tuple[int, ...]
    memory_budget: float
    posts: int
    sync_channels: int
    shard_members: int
    landing_600: int


FULL = Scale(4.0, 200_000, 2_000, 40_000, 10.0, 1_000_000,
             (10_000_000, 5_000_000, 3_000_000, 2_000_000), 130.0, 10_000,
             1000, 200_000, 600_000)  # fmt: skip
QUICK = Scale(1.5, 40_000, 500, 6_000, 3.0, 200_000, (600_000, 400_000), 12.0, 2_000, 200, 40_000,
              60_000)  # fmt: skip


def emulator_posts(scale: Scale) -> list[Row]:
    result = emulator_throughput.measure(scale.posts, 200, 100, 64, 200)
    needed = max(rate.RATES)
    cpu = result.emulator_cpu / result.posts * 1e6
    return [
        Row("5 emulator", f"POSTs/s of 100 members, {result.posts:,} POSTs, 64 connections",
            f"{result.per_second:,.0f}/s; emulator CPU {cpu:,.0f} µs/POST",
            f"needed by target 1: {needed:,}/s", f"> {needed:,}/s (never the bottleneck)",
            verdict(result.per_second > needed and set(result.statuses) == {201}),
            {"posts_per_s": result.per_second, "statuses": result.statuses})
    ]  # fmt: skip


def targets(scale: Scale) -> list[tuple[str, Callable[[], list[Row]]]]:
    memory_rows: list[Row] = []

    def local_and_memory() -> list[Row]:
        cost, small = local.local_cost(scale.local_rows)
        memory_rows.extend(local.memory(small, scale.memory_budget, scale.memory_sizes))
        return cost + memory_rows

    return [
        ("rate precision", lambda: rate.rate_precision(scale.rate_seconds)),
        ("latency hiding", lambda: landing.latency_hiding(
            scale.landing_members, scale.naive_members, scale.pool_members, scale.peer_cap)),
        ("local cost and memory", local_and_memory),
        ("emulator throughput", lambda: emulator_posts(scale)),
        ("landing throughput", lambda: [
            *throughput.landing(scale.landing_600),
            *throughput.landing(scale.landing_600, "ndjson")]),
        ("nightly sync", lambda: sync.nightly(scale.sync_channels)),
        ("shards", lambda: sync.shards(scale.shard_members, 200, 400.0)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, under a minute")
    args = parser.parse_args()
    scale, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    started = time.perf_counter()
    rows: list[Row] = []
    for name, run in targets(scale):
        begun = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        rows += run()
        print(f"bench: {name} done in {time.perf_counter() - begun:.0f} s", flush=True)
    elapsed = time.perf_counter() - started
    rows.append(Row("—", "harness", f"{elapsed:.0f} s", "", "", INFO, {"mode": mode}))
    save(rows, mode, elapsed)
    show(rows, f"vpc-members bench ({mode}, `make bench{'-quick' if args.quick else ''}`)")
    print("results: bench/results.json")


if __name__ == "__main__":
    main()
