"""Rate limiting of repeated log lines (issue 11 item 3).

A flood repeats one error thousands of times a second (asyncio's "socket.accept() out of system resource": 92,159
lines, 40.8 MB of agent.log in 12 s). `RepeatFilter` lets through the first `burst` records of each message
template per `window` s and drops the rest; the next record let through says how many were dropped.
"""

from __future__ import annotations

import logging
import time

MAX_KEYS = 1024  # distinct templates tracked; past that the table starts over (bounded memory)


class RepeatFilter(logging.Filter):
    def __init__(self, burst: int = 5, window: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._seen: dict[tuple[str, object], list[float | int]] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            dropped = int(entry[2]) if entry is not None else 0
            if len(self._seen) >= MAX_KEYS and entry is None:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} [{dropped} more like this dropped in the last {self.window:g} s]"
            return True
        entry[1] = int(entry[1]) + 1
        if entry[1] <= self.burst:
            return True
        entry[2] = int(entry[2]) + 1
        return False
