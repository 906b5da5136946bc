"""Per-key token-bucket rate limiting (429 with Retry-After)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key id: `rate_per_minute` refill, `burst` capacity.

    `acquire` returns 0 when the request may proceed, otherwise the whole seconds the
    caller should wait (the Retry-After value).
    """

    def __init__(
        self,
        rate_per_minute: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = float(burst if burst is not None else max(1, math.ceil(rate_per_minute)))
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def blocked(self, key_id: str) -> int:
        """Seconds until `key_id` has a token again (0 if it has one now); consumes nothing."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                return 0
            tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            return 0 if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / self.rate))

    def acquire(self, key_id: str) -> int:
        """Take one token for `key_id`; 0 on success, else seconds until one is available."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = _Bucket(self.capacity, now)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))
