"""Issue 11's row, the nightly case: 1,000 channels of 100 members, already identical to the
inventory, behind a service limit of 200 requests/s. ``sync`` must send no write and end
within 1.1x of (pages read / rate); beside it, ``run`` of the same inventory (what a user
does today). Then 1% of the members changed and 1% extra, with ``--prune``: the writes
must be the changed batches plus the extras."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bench.inputs import inventory
from bench.procs import WORK, Emulator, emulator, run_cli
from bench.report import INFO, Row, verdict

RATE = 200
CHANNELS = 1000
PER_CHANNEL = 100
PAGE = 500
BATCH = 100


def _writes(server: Emulator) -> int:
    by_method = server.stats()["requests_by_method"]
    return int(by_method.get("POST", 0)) + int(by_method.get("DELETE", 0))


def _changed(source: Path, target: Path, channels: int) -> tuple[int, int, int]:
    """``target``: ``source`` with 1% of each channel's members changed (another weight)
    and 1% left out (live extras); returns (changed, left out, batches the changes take).

    The inventory deals row n to channel n mod ``channels``, so a channel's k-th member is
    row k * channels + c."""
    changed = dropped = 0
    per_channel: dict[str, int] = {}
    with source.open(newline="") as inp, target.open("w", newline="") as out:
        reader = csv.DictReader(inp)
        assert reader.fieldnames is not None
        writer = csv.DictWriter(out, reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        for n, row in enumerate(reader):
            k = n // channels
            if k % 100 == 0:
                row["weight"] = str((int(row["weight"]) + 1) % 10_001)
                changed += 1
                per_channel[row["vpc_channel_id"]] = per_channel.get(row["vpc_channel_id"], 0) + 1
            elif k % 100 == 1:
                dropped += 1
                continue
            writer.writerow(row)
    batches = sum(math.ceil(count / BATCH) for count in per_channel.values())
    return changed, dropped, batches


def nightly(channels: int = CHANNELS) -> list[Row]:
    members = channels * PER_CHANNEL
    path = inventory(members, channels)
    pages = channels * math.ceil(PER_CHANNEL / PAGE)
    ideal = pages / RATE
    flags = ("--rate", str(RATE), "--concurrency", "16", "--batch-size", str(BATCH))
    with emulator("--rate", str(RATE), "--burst", str(RATE // 10)) as server:
        seeded = run_cli("run", [path], "--endpoint", server.url, *flags)
        before = _writes(server)
        synced = run_cli("sync", [path], "--endpoint", server.url, *flags)
        writes = _writes(server) - before
        changed_path = WORK / f"nightly-changed-{members}.csv"
        changed, extras, changed_batches = _changed(path, changed_path, channels)
        before = _writes(server)
        pruned = run_cli(
            "sync", [changed_path], "--endpoint", server.url, *flags, "--prune",
            "--max-prune", "5",
        )  # fmt: skip
        prune_writes = _writes(server) - before
    elapsed = float(synced.summary.get("elapsed_seconds", math.inf))
    run_elapsed = float(seeded.summary.get("elapsed_seconds", math.inf))
    ok = writes == 0 and elapsed <= 1.1 * ideal and synced.process.returncode == 0
    expected_writes = changed_batches + extras
    actions = pruned.summary.get("actions", {})
    removed = pruned.summary.get("extras", {}).get("removed", 0)
    return [
        Row(
            "11 nightly sync",
            f"{channels:,} channels × {PER_CHANNEL} members, in sync, service limit {RATE}/s",
            f"{elapsed:.2f} s = {elapsed / ideal:.3f}× ({pages:,} pages / {RATE}/s = "
            f"{ideal:.1f} s); {writes} writes; CPU {synced.process.cpu:.1f} s",
            f"`run` of the same inventory: {run_elapsed:.2f} s, "
            f"{seeded.summary.get('requests', {}).get('sent', 0):,} writes",
            f"0 writes, ≤ {1.1 * ideal:.1f} s (1.1 × pages / rate)",
            verdict(ok),
            {"sync": synced.summary, "run": seeded.summary, "ideal": ideal},
        ),
        Row(
            "11 nightly sync",
            f"1% changed ({changed:,}), 1% extra ({extras:,}), --prune",
            f"{prune_writes:,} writes ({actions.get('updated', 0):,} members updated, "
            f"{removed:,} removed) in {pruned.summary.get('elapsed_seconds', 0):.2f} s",
            "",
            f"writes = changed batches ({changed_batches:,}) + extras ({extras:,}) = "
            f"{expected_writes:,}",
            verdict(prune_writes == expected_writes and pruned.process.returncode == 0),
            {"summary": pruned.summary, "writes": prune_writes},
        ),
    ]


def shards(members: int, channels: int, rate: float) -> list[Row]:
    """Issue 13's figure: one process beside four ``--shard k/4`` processes sharing the
    service's limit (each at rate/4), against one emulator."""
    import concurrent.futures

    path = inventory(members, channels)
    flags = ("--concurrency", "32", "--batch-size", str(BATCH))
    with emulator("--rate", str(rate), "--burst", str(max(1, rate // 10))) as server:
        one = run_cli("run", [path], "--endpoint", server.url, "--rate", str(rate), *flags)
    with emulator("--rate", str(rate), "--burst", str(max(1, rate // 10))) as server:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = list(
                pool.map(
                    lambda k: run_cli(
                        "run",
                        [path],
                        "--endpoint",
                        server.url,
                        "--rate",
                        str(rate / 4),
                        "--shard",
                        f"{k}/4",
                        *flags,
                    ),
                    range(4),
                )
            )
        throttled = int(server.stats()["throttled"])
    wall = max(r.process.elapsed for r in runs)
    cpu = sum(r.process.cpu for r in runs)
    landed = sum(int(r.summary.get("rows", {}).get("succeeded", 0)) for r in runs)
    return [
        Row(
            "13 shards",
            f"{members:,} members, {channels:,} channels, service limit {rate:g}/s",
            f"4 × --shard k/4 at {rate / 4:g}/s: {wall:.2f} s wall, {cpu:.1f} s CPU in all, "
            f"{landed:,} landed, {throttled} × 429",
            f"one process at {rate:g}/s: {one.process.elapsed:.2f} s wall, "
            f"{one.process.cpu:.1f} s CPU, "
            f"{int(one.summary.get('rows', {}).get('succeeded', 0)):,} landed",
            "every member landed once; no 429",
            INFO if landed == members and throttled == 0 else verdict(False),
            {"shards": [r.summary for r in runs], "one": one.summary},
        )
    ]
