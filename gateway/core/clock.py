"""Time, injectable: the gateway reads the clock through one object, so a test can set the
time instead of racing a sleep against a delay."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (expiries, leases, records)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (durations, timeouts)."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.perf_counter()


SYSTEM_CLOCK: Clock = SystemClock()
