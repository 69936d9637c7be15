"""Targets 3 and 4, local cost and memory: ``vpc-members plan`` against a raw parsing loop
over the same file, and its peak RSS at two sizes."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from bench.inputs import inventory
from bench.procs import run_cli
from bench.report import INFO, Row, verdict

CHANNELS = 1000
MB = 1024 * 1024
# Each format's plainest loop that reads every row: what the worker's cost is set beside.
RAW_LOOPS: Final = {"csv": "csv.reader", "ndjson": "orjson.loads per line"}


@dataclass(frozen=True, slots=True)
class Plan:
    rows: int
    elapsed: float
    cpu: float
    max_rss: int

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed


# Runs of each side of a ratio, the fastest taken: a stall of this shared machine (one
# made a raw loop ten times slower) must not pass for a speed of either.
RUNS = 3


def plan(path: Path, rows: int, timeout: float = 900.0, runs: int = 1) -> Plan:
    """The fastest of ``runs`` plans of ``path``, with the highest peak RSS of them."""
    measured: list[Plan] = []
    for _ in range(runs):
        run = run_cli("plan", [path], timeout=timeout)
        if run.process.returncode != 0:
            raise RuntimeError(f"plan failed: {run.process.stderr[-2000:]}")
        measured.append(Plan(rows, run.process.elapsed, run.process.cpu, run.process.max_rss))
    fastest = min(measured, key=lambda p: p.elapsed)
    return Plan(rows, fastest.elapsed, fastest.cpu, max(p.max_rss for p in measured))


def raw_rate(path: Path, runs: int = RUNS) -> float:
    """Rows a second of the plainest loop that reads every row: csv.reader, or orjson.loads
    per line, each row touched once; the fastest of ``runs``."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        count = raw_rows(path)
        best = min(best, time.perf_counter() - started)
    return count / best


def raw_rows(path: Path) -> int:
    """The rows of ``path`` as its format's loop in ``RAW_LOOPS`` reads them."""
    return _raw_ndjson(path) if path.suffix == ".ndjson" else _raw_csv(path)


def _raw_csv(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as handle:
        return sum(bool(row) for row in csv.reader(handle))


def _raw_ndjson(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(bool(orjson.loads(line)) for line in handle)


def local_cost(rows: int) -> tuple[list[Row], Plan]:
    """Target 3 for CSV and NDJSON; returns the CSV plan too, for target 4."""
    result: list[Row] = []
    plans: dict[str, Plan] = {}
    for fmt, loop in RAW_LOOPS.items():
        path = inventory(rows, CHANNELS, fmt)
        raw = raw_rate(path)
        plans[fmt] = measured = plan(path, rows, runs=RUNS)
        ratio = measured.rate / raw
        result.append(
            Row(
                "3 local cost",
                f"plan {rows:,} {fmt.upper()} rows",
                f"{measured.rate:,.0f} rows/s ({ratio:.3f}× raw); "
                f"CPU {measured.cpu / rows * 1e6:.1f} µs/row",
                f"{loop}: {raw:,.0f} rows/s (each the fastest of {RUNS} runs)",
                "≥ 0.35× raw",
                verdict(ratio >= 0.35),
                {
                    "plan_rows_per_s": measured.rate,
                    "raw_rows_per_s": raw,
                    "ratio": ratio,
                    "plan_seconds": measured.elapsed,
                    "plan_cpu": measured.cpu,
                },
            )
        )
    return result, plans["csv"]


def large_rows(small: Plan, budget: float, sizes: tuple[int, ...]) -> tuple[int, str]:
    """The largest of ``sizes`` whose plan, at the measured rate, fits ``budget`` seconds."""
    for size in sizes:
        predicted = size / small.rate
        if predicted <= budget:
            return size, f"{size:,} rows (predicted {predicted:.0f} s ≤ {budget:.0f} s budget)"
    size = sizes[-1]
    return size, f"{size:,} rows (predicted {size / small.rate:.0f} s, over the budget)"


def memory(small: Plan, budget: float, sizes: tuple[int, ...]) -> list[Row]:
    """Target 4: peak RSS at ``small.rows`` and growth per distinct address up to a larger
    run (every generated row has its own address)."""
    size, why = large_rows(small, budget, sizes)
    if sizes[0] != size:
        why += f"; {sizes[0]:,} would take about {sizes[0] / small.rate:.0f} s"
    large = plan(inventory(size, CHANNELS), size)
    growth = (large.max_rss - small.max_rss) / (size - small.rows)
    peak = small.max_rss / MB
    return [
        Row("4 memory", f"peak RSS, plan {small.rows:,} rows", f"{peak:,.0f} MB", "", "≤ 300 MB",
            verdict(peak <= 300), {"max_rss": small.max_rss}),
        Row("4 memory", f"growth per distinct address, {small.rows:,} → {size:,} rows",
            f"{growth:,.0f} B/address ({large.max_rss / MB:,.0f} MB at {size:,})", why,
            "< 150 B", verdict(growth < 150),
            {"max_rss_large": large.max_rss, "rows_large": size, "plan_seconds": large.elapsed,
             "bytes_per_address": growth}),
        Row("4 memory", f"plan {size:,} CSV rows", f"{large.rate:,.0f} rows/s", "", "", INFO,
            {"plan_seconds": large.elapsed}),
    ]  # fmt: skip
