"""API keys: generated once, stored as sha256 hex, listed and revoked by administrators.

A key is `hcd_` + 43 URL-safe characters; only its hash and a short prefix (for display) are kept.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobs.settings import API_KEY_PATTERN, API_KEY_PREFIX, Settings
from jobs.tables import ApiKey

BOOTSTRAP_OWNER = "admin"
_PREFIX_CHARS = 12  # shown in `hcd keys list`; enough to tell keys apart, useless to an attacker


def generate_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def plausible_key(key: str) -> bool:
    """Cheap shape check before any lookup (a malformed key is never looked up)."""
    return API_KEY_PATTERN.match(key) is not None


def create_key(session: Session, owner: str) -> str:
    """Insert a new key for `owner` (the caller commits) and return it; only its hash is stored."""
    if not owner or len(owner) > 128:
        raise ValueError("owner must be 1..128 characters")
    key = generate_key()
    session.add(ApiKey(owner=owner, key_hash=hash_key(key), prefix=key[:_PREFIX_CHARS]))
    session.flush()
    return key


def ensure_bootstrap_key(session: Session, settings: Settings) -> None:
    """Make HCD_BOOTSTRAP_API_KEY a valid key of 'admin' and revoke any earlier bootstrap key."""
    key = settings.bootstrap_api_key
    if not key:
        return
    digest = hash_key(key)
    session.execute(
        insert(ApiKey)
        .values(owner=BOOTSTRAP_OWNER, key_hash=digest, prefix=key[:_PREFIX_CHARS], bootstrap=True)
        .on_conflict_do_update(index_elements=["key_hash"], set_={"bootstrap": True, "revoked_at": None})
    )
    session.execute(
        update(ApiKey)
        .where(ApiKey.bootstrap.is_(True), ApiKey.key_hash != digest, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


def owner_for_key(session: Session, key: str) -> str | None:
    """The owner of a valid, unrevoked key, or None."""
    if not plausible_key(key):
        return None
    return session.execute(
        select(ApiKey.owner).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()


def has_active_key(session: Session, owner: str) -> bool:
    return session.execute(
        select(ApiKey.id).where(ApiKey.owner == owner, ApiKey.revoked_at.is_(None)).limit(1)
    ).first() is not None


@dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    owner: str
    prefix: str
    bootstrap: bool
    created_at: datetime
    revoked_at: datetime | None


def list_keys(session: Session, owner: str | None = None, *, include_revoked: bool = False) -> list[KeyInfo]:
    query = select(ApiKey).order_by(ApiKey.owner, ApiKey.created_at)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [KeyInfo(k.id, k.owner, k.prefix, k.bootstrap, k.created_at, k.revoked_at)
            for k in session.execute(query).scalars()]


def revoke_keys(session: Session, ref: str) -> int:
    """Revoke a key given as its id, the key itself, or its displayed prefix; returns how many were revoked."""
    if plausible_key(ref) and len(ref) > _PREFIX_CHARS:
        condition = ApiKey.key_hash == hash_key(ref)
    else:
        try:
            condition = ApiKey.id == uuid.UUID(ref)
        except ValueError:
            if len(ref) < _PREFIX_CHARS:
                raise ValueError(f"give the key's id, the key, or its {_PREFIX_CHARS}-character prefix") from None
            condition = ApiKey.prefix == ref[:_PREFIX_CHARS]
    result = session.execute(
        update(ApiKey).where(condition, ApiKey.revoked_at.is_(None)).values(revoked_at=func.now())
        .returning(ApiKey.id)
    )
    return len(result.all())
