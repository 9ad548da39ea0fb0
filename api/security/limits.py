"""Rate limits, sans-IO: each takes ``now_s`` and answers; the caller owns the clock.

- ``TokenBuckets``: per key (an API token, a session's user), ``burst`` requests refilled at
  ``rate_per_s``; a refusal says how long until the next request would pass (Retry-After).
- ``WindowCounter``: at most ``limit`` events per key in a sliding ``window_s`` (login
  attempts per client address).

Both forget idle keys, so memory stays bounded by the keys active in the last window.
In-process state: with several API processes each enforces its own share, which is what a
per-process limit is for (protecting this process); the account lockout, which must hold
across processes, is in the database (``store.check_login``).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBuckets:
    rate_per_s: float
    burst: int
    max_keys: int = 100_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, at_s)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str, now_s: float) -> float:
        """0 when the request may pass (one token taken); else seconds until one is available."""
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now_s))
            tokens = min(float(self.burst), tokens + max(0.0, now_s - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now_s)
                if len(self._buckets) > self.max_keys:
                    self._forget(now_s)
                return 0.0
            self._buckets[key] = (tokens, now_s)
            return (1.0 - tokens) / self.rate_per_s

    def _forget(self, now_s: float) -> None:
        full_after = self.burst / self.rate_per_s
        for key in [k for k, (_t, at) in self._buckets.items() if now_s - at >= full_after]:
            del self._buckets[key]


@dataclass(slots=True)
class WindowCounter:
    limit: int
    window_s: float
    _events: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, key: str, now_s: float) -> int:
        """Count one event; 0 if within the limit, else whole seconds until one would be."""
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and q[0] <= now_s - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return max(1, math.ceil(q[0] + self.window_s - now_s))
            q.append(now_s)
            if len(self._events) > 10_000:
                for k in [k for k, v in self._events.items() if not v or v[-1] <= now_s - self.window_s]:
                    del self._events[k]
            return 0
