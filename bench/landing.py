"""Target 2, latency hiding: 200,000 members in batches of 100 at 200 requests/s against an
emulator answering after 50 ± 10 ms, beside a naive loop and a thread pool of 16."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.inputs import inventory
from bench.procs import ProcessRun, emulator, run_cli, run_peer
from bench.report import PEER, Row, verdict

RATE = 200
BATCH = 100
CHANNELS = 200
LATENCY_MS, JITTER_MS = 50, 10
MARGIN = 2.0
FLAGS = (
    "--rate", str(RATE), "--burst", str(RATE // 10),
    "--latency-ms", str(LATENCY_MS), "--jitter-ms", str(JITTER_MS),
)  # fmt: skip


def concurrency() -> tuple[int, str]:
    """Little's law: requests in flight = rate x time in flight; the worst answer time
    (latency + jitter) with a margin for client and server time and queueing."""
    worst = (LATENCY_MS + JITTER_MS) / 1000
    n = math.ceil(RATE * worst * MARGIN)
    return n, f"Little's law: {RATE}/s × {worst * 1000:.0f} ms worst answer × {MARGIN:g} margin"


@dataclass(frozen=True, slots=True)
class Landing:
    """One client's run: ``members`` landed of ``asked`` in ``elapsed`` seconds."""

    members: int
    elapsed: float
    cpu: float
    throttled: int
    asked: int

    def projected(self, total: int) -> float:
        """Time for ``total`` members at this run's pace (extrapolated from a subset)."""
        return self.elapsed * total / max(1, self.members)

    def text(self, total: int) -> str:
        cpu = self.cpu / max(1, self.members) * 1e6
        scaled = (
            "" if self.members >= total else f" (from {self.members:,} in {self.elapsed:.1f} s)"
        )
        return (
            f"{self.projected(total):,.1f} s for {total:,}{scaled}; "
            f"{self.throttled} × 429; CPU {cpu:,.1f} µs/member"
        )


def ours(members: int) -> tuple[Landing, dict[str, Any]]:
    path = inventory(members, CHANNELS)
    n, _ = concurrency()
    with emulator(*FLAGS) as server:
        run = run_cli(
            "run", [path], "--endpoint", server.url, "--rate", str(RATE),
            "--concurrency", str(n), "--batch-size", str(BATCH),
        )  # fmt: skip
        throttled = int(server.stats()["throttled"])
    rows = run.summary.get("rows", {})
    landed = int(rows.get("succeeded", 0))
    landing = Landing(
        landed, float(run.summary["elapsed_seconds"]), run.process.cpu, throttled, members
    )
    return landing, {
        "summary_rows": rows,
        "wall": run.process.elapsed,
        "max_rss": run.process.max_rss,
    }


def peer(client: str, members: int, seconds: float) -> Landing:
    with emulator(*FLAGS) as server:
        process, tally = run_peer(
            client, server.url, "--members", str(members), "--seconds", str(seconds),
            "--batch", str(BATCH), "--channels", str(CHANNELS), timeout=seconds + 120,
        )  # fmt: skip
    return _peer_landing(process, tally, members)


def _peer_landing(process: ProcessRun, tally: dict[str, Any], asked: int) -> Landing:
    throttled = int(tally["by_status"].get("429", 0))
    return Landing(
        int(tally["landed_members"]), float(tally["elapsed"]), process.cpu, throttled, asked
    )


def latency_hiding(members: int, naive_members: int, pool_members: int, cap: float) -> list[Row]:
    ideal = members / (RATE * BATCH)
    mine, extra = ours(members)
    peers = {
        "naive sequential aiohttp, 1 member/request": peer("naive", naive_members, cap),
        "thread pool of 16, http.client, no rate limit": peer("pool", pool_members, cap),
    }
    n, why = concurrency()
    ratio = mine.elapsed / ideal
    ok = ratio <= 1.05 and mine.members == members
    goal = f"≤ {1.05 * ideal:.1f} s (1.05 × ideal {ideal:g} s = N/(R·B))"
    baseline = "; ".join(f"{name}: {p.projected(members):,.0f} s" for name, p in peers.items())
    figure = f"{mine.text(members)}; {ratio:.3f}× ideal; --concurrency {n} ({why})"
    data: dict[str, object] = {"ours": vars_of(mine), "ideal": ideal, "concurrency": n, **extra}
    rows = [Row("2 latency hiding", f"{members:,} members, worker", figure, baseline, goal,
                verdict(ok), data)]  # fmt: skip
    for name, p in peers.items():
        rows.append(Row("2 latency hiding", name, p.text(members), "", goal, PEER, vars_of(p)))
    return rows


def vars_of(landing: Landing) -> dict[str, object]:
    return {name: getattr(landing, name) for name in Landing.__slots__}
