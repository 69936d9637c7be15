"""Target 1, rate precision: the worker's limiter against asyncio-throttle, each driving the
same emulator (``--rate R --burst max(1, R/10)``) with the same number of requests.

Rates and windows are counted on the wire (see :mod:`bench.wire`) where a packet socket
can be opened, else by the emulator's clock; each row says which, and gives the
emulator's windows beside the wire's."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.inputs import inventory
from bench.measure import achieved_rate, max_in_window
from bench.procs import Emulator, emulator, run_cli, run_peer
from bench.report import PEER, Row, verdict
from bench.wire import Wire, wire

RATES = (10, 100, 1000)
MEMBERS = 10  # per request: the limiter is under test here, not parsing (see target 3)
CHANNELS = 64  # at most: fewer when the run is short, so every batch is full
CONCURRENCY = 32  # far above R x loopback latency at every R: demand always exceeds R


@dataclass(frozen=True, slots=True)
class Precision:
    rate: float
    achieved: float
    window_max: int
    throttled: int
    sent: int
    clock: str  # where the times were taken: "wire" or "emulator"
    emulator_window_max: int

    @property
    def window_cap(self) -> int:
        return max(2, int(self.rate / 10) + 1)

    @property
    def ok(self) -> bool:
        return (
            self.achieved >= 0.97 * self.rate
            and self.window_max <= self.window_cap
            and self.throttled == 0
        )

    def text(self) -> str:
        where = "by the emulator's clock"
        if self.clock == "wire":
            where = f"on the wire ({self.emulator_window_max} {where})"
        return (
            f"{self.achieved:,.1f}/s ({self.achieved / self.rate:.2f}R), "
            f"max {self.window_max}/100ms {where}, {self.throttled} × 429 of {self.sent}"
        )


def _precise(rate: float, server: Emulator, recorder: Wire | None) -> Precision:
    stamped = server.arrivals()
    # A record that missed a request (the kernel dropped packets) is no record.
    whole = recorder is not None and not recorder.dropped and len(recorder.times) == len(stamped)
    times = recorder.times if whole and recorder is not None else stamped
    return Precision(
        rate=rate,
        achieved=achieved_rate(times),
        window_max=max_in_window(times),
        throttled=int(server.stats()["throttled"]),
        sent=len(stamped),
        clock="wire" if whole else "emulator",
        emulator_window_max=max_in_window(stamped),
    )


def _flags(rate: int) -> tuple[str, ...]:
    return ("--rate", str(rate), "--burst", str(max(1, rate // 10)), "--record-arrivals")


def _channels(requests: int) -> int:
    return CHANNELS if requests >= 8 * CHANNELS else 4


def ours(rate: int, requests: int) -> Precision:
    path = inventory(requests * MEMBERS, _channels(requests))
    with emulator(*_flags(rate)) as server:
        with wire(server.port) as recorder:
            run_cli(
                "run", [path], "--endpoint", server.url, "--rate", str(rate),
                "--concurrency", str(CONCURRENCY), "--batch-size", str(MEMBERS),
            )  # fmt: skip
        return _precise(rate, server, recorder)


def throttle(rate: int, requests: int, limit: int, period: float) -> Precision:
    with emulator(*_flags(rate)) as server:
        with wire(server.port) as recorder:
            run_peer(
                "throttle", server.url, "--rate-limit", str(limit), "--period", str(period),
                "--requests", str(requests), "--members", str(MEMBERS),
                "--concurrency", str(CONCURRENCY), "--channels", str(_channels(requests)),
            )  # fmt: skip
        return _precise(rate, server, recorder)


def rate_precision(seconds: float) -> list[Row]:
    """For each R, about ``seconds`` of requests from each limiter."""
    rows: list[Row] = []
    for rate in RATES:
        wanted = int(rate * seconds)
        requests = -(-wanted // _channels(wanted)) * _channels(wanted)  # only whole batches
        mine = ours(rate, requests)
        peers = {
            f"Throttler({rate}, 1.0)": throttle(rate, requests, rate, 1.0),
            f"Throttler({max(1, rate // 10)}, 0.1)": throttle(
                rate, requests, max(1, rate // 10), 0.1
            ),
        }
        goal = f"≥ {0.97 * rate:g}/s, ≤ {mine.window_cap}/100ms, 0 × 429"
        baseline = "; ".join(f"{name}: {p.text()}" for name, p in peers.items())
        data: dict[str, object] = {"ours": asdict(mine)}
        data.update((name, asdict(p)) for name, p in peers.items())
        rows.append(
            Row("1 rate precision", f"R={rate} worker", mine.text(), baseline, goal,
                verdict(mine.ok), data)
        )  # fmt: skip
        for name, peer in peers.items():
            rows.append(
                Row("1 rate precision", f"R={rate} {name}", peer.text(), "", goal, PEER,
                    asdict(peer))
            )  # fmt: skip
    return rows
