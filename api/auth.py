"""Bearer API keys on requests: the owner of a key, looked up in Postgres and briefly cached."""

from __future__ import annotations

import threading
import time

from jobs.keys import hash_key, plausible_key

_CACHE_TTL_SECONDS = 10.0  # a revoked key stops working within this long


class KeyCache:
    """hash -> (owner, expiry); saves a query on hot routes. Thread-safe (database calls run in threads)."""

    def __init__(self, ttl: float = _CACHE_TTL_SECONDS, max_entries: int = 10_000):
        self._ttl, self._max = ttl, max_entries
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        if not plausible_key(key):
            return None
        with self._lock:
            hit = self._entries.get(hash_key(key))
            if hit and hit[1] > time.monotonic():
                return hit[0]
            return None

    def put(self, key: str, owner: str) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[hash_key(key)] = (owner, time.monotonic() + self._ttl)
