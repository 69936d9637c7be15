"""Issue 14's landing rows: at ``--rate 600`` with batches of 100, against an emulator that
answers after 50 ± 10 ms and throttles at 600/s, the achieved rate (at the emulator, from
its arrival record), the 429s, and the worker's CPU per landed member beside the CPU per
row of the format's raw loop (``csv.reader``, ``orjson.loads``) over the same file, in the
same run."""

from __future__ import annotations

import time
from pathlib import Path

from bench.emulator_throughput import cpu_seconds
from bench.inputs import inventory
from bench.local import RAW_LOOPS, raw_rows
from bench.measure import achieved_rate, max_in_window
from bench.procs import emulator, run_cli
from bench.report import Row, verdict

RATE = 600
BATCH = 100
CHANNELS = 200
CONCURRENCY = 64


def raw_cpu(path: Path) -> float:
    """CPU seconds per row of the plainest loop over the file (``RAW_LOOPS``)."""
    started = time.process_time()
    rows = raw_rows(path)
    return (time.process_time() - started) / rows


def landing(members: int, fmt: str = "csv") -> list[Row]:
    path = inventory(members, CHANNELS, fmt)
    per_row = raw_cpu(path)
    loop = RAW_LOOPS[fmt]
    flags = ("--rate", str(RATE), "--burst", str(RATE // 10), "--latency-ms", "50",
             "--jitter-ms", "10", "--record-arrivals")  # fmt: skip
    with emulator(*flags) as server:
        emulator_cpu = cpu_seconds(server.pid)
        run = run_cli(
            "run", [path], "--endpoint", server.url, "--rate", str(RATE),
            "--concurrency", str(CONCURRENCY), "--batch-size", str(BATCH),
        )  # fmt: skip
        emulator_cpu = cpu_seconds(server.pid) - emulator_cpu
        throttled = int(server.stats()["throttled"])
        arrivals = server.arrivals()
    landed = int(run.summary.get("rows", {}).get("succeeded", 0))
    achieved = achieved_rate(arrivals)
    per_member = run.process.cpu / max(1, landed)
    ratio = achieved / RATE
    times = per_member / per_row
    ok = ratio >= 0.97 and throttled == 0 and landed == members
    return [
        Row(
            "14 landing throughput",
            f"{members:,} {fmt.upper()} members, batches of {BATCH}, --rate {RATE}, 50±10 ms "
            f"answers, --concurrency {CONCURRENCY}",
            f"{achieved:,.1f} requests/s = {ratio:.3f}× {RATE}; {throttled} × 429; max "
            f"{max_in_window(arrivals)} per 100 ms; worker CPU {per_member * 1e6:.1f} µs per "
            f"member = {times:.1f}× {loop}; worker at "
            f"{100 * run.process.cpu / run.process.elapsed:.0f}% of a core, emulator at "
            f"{100 * emulator_cpu / run.process.elapsed:.0f}%; peak RSS "
            f"{run.process.max_rss / 2**20:.0f} MB",
            f"{loop} over the same file: {per_row * 1e6:.2f} µs CPU per row",
            f"≥ 0.97 × {RATE}/s, 0 × 429; CPU ≤ 8× {loop} (aim)",
            verdict(ok),
            {"achieved": achieved, "throttled": throttled, "cpu_per_member": per_member,
             "raw_loop": loop, "raw_per_row": per_row, "summary": run.summary},
        )
    ]  # fmt: skip
