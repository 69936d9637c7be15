"""Figures over the emulator's record of arrival times (monotonic seconds)."""

from __future__ import annotations

from collections.abc import Sequence


def achieved_rate(arrivals: Sequence[float]) -> float:
    """Requests per second from the first arrival to the last: (n - 1) / (last - first)."""
    times = sorted(arrivals)
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def max_in_window(arrivals: Sequence[float], window: float = 0.1) -> int:
    """The most arrivals in any half-open window [t, t + window), sliding over the record."""
    times = sorted(arrivals)
    most = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
