"""Bearer API keys: generated once, stored as sha256 hex, looked up per request (briefly cached)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.db import session_scope
from api.settings import Settings
from api.tables import ApiKey

KEY_PREFIX = "hcd_"
BOOTSTRAP_OWNER = "admin"
_CACHE_TTL_SECONDS = 10.0  # a revoked key stops working within this long


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(session: Session, owner: str) -> str:
    """Insert a new key for `owner` (the caller commits) and return it; only its hash is stored."""
    if not owner or len(owner) > 128:
        raise ValueError("owner must be 1..128 characters")
    key = generate_key()
    session.add(ApiKey(owner=owner, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return key


def ensure_bootstrap_key(settings: Settings) -> None:
    """When HCD_BOOTSTRAP_API_KEY is set, make sure a key with that value exists for 'admin'."""
    key = settings.bootstrap_api_key
    if not key or not settings.database_url:
        return
    with session_scope(settings.database_url) as session:
        session.execute(
            insert(ApiKey)
            .values(owner=BOOTSTRAP_OWNER, key_hash=hash_key(key), prefix=key[:12])
            .on_conflict_do_nothing(index_elements=["key_hash"])
        )


class KeyCache:
    """hash -> (owner, expiry); saves a query on hot routes. Thread-safe (sync routes run in threads)."""

    def __init__(self, ttl: float = _CACHE_TTL_SECONDS, max_entries: int = 10_000):
        self._ttl, self._max = ttl, max_entries
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> str | None:
        with self._lock:
            hit = self._entries.get(key_hash)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            return None

    def put(self, key_hash: str, owner: str) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key_hash] = (owner, time.monotonic() + self._ttl)


def cached_owner(key: str, cache: KeyCache) -> str | None:
    return cache.get(hash_key(key)) if key.startswith(KEY_PREFIX) and len(key) <= 256 else None


def owner_for_key(session: Session, key: str, cache: KeyCache | None = None) -> str | None:
    """The owner of a valid, unrevoked key, or None."""
    if not key.startswith(KEY_PREFIX) or len(key) > 256:
        return None
    digest = hash_key(key)
    if cache is not None and (owner := cache.get(digest)) is not None:
        return owner
    owner = session.execute(
        select(ApiKey.owner).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if owner is not None and cache is not None:
        cache.put(digest, owner)
    return owner
