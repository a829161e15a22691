"""Exponential retry delays, shared by Nomad refreshes and the event stream."""

from __future__ import annotations


class Backoff:
    """base, 2*base, 4*base ... capped at cap_s; reset() after a success."""

    def __init__(self, base_s: float = 1.0, cap_s: float = 30.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def fail(self) -> float:
        """Record a failure; the delay to wait before the next attempt."""
        self.failures += 1
        return self.delay

    @property
    def delay(self) -> float:
        if self.failures == 0:
            return 0.0
        return min(self.cap_s, self.base_s * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0
