"""API keys collection: only SHA-256 hashes of keys are stored, never the keys."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument, UpdateOne

from gateway.store.accounts import now

KEY_PREFIX = "ayct_"
KEY_LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")
CONTROLS = ("expires_at", "allowed_models", "allowed_cidrs", "limits")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new API key: recognisable prefix + 256 bits of randomness (43 url-safe chars)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeys:
    """API key records: sha256 (unique), display prefix, name, account, timestamps, and
    per-key controls: ``expires_at``, ``allowed_models``, ``allowed_cidrs``, ``limits``
    ({requests_per_minute, tokens_per_minute, tokens_per_day}; absent or 0: the tier's),
    and ``scopes`` (admin API keys only)."""

    def __init__(self, db) -> None:
        self.col = db["api_keys"]

    async def init(self) -> None:
        await self.col.create_index("sha256", unique=True)
        await self.col.create_index("account_id")

    async def create(self, account_id: str, name: str = "", *, scopes: list[str] | None = None,
                     **controls: Any) -> tuple[str, dict[str, Any]]:
        """Create a key; returns (the key itself, shown once, and its stored record)."""
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise ValueError(f"unknown key controls {sorted(unknown)}")
        key = new_key()
        doc = {"_id": "key_" + secrets.token_hex(12), "sha256": hash_key(key),
               "prefix": key[:len(KEY_PREFIX) + 8], "name": name, "account_id": account_id,
               "created_at": now(), "revoked_at": None, "last_used_at": None,
               "scopes": list(scopes or []), **controls}
        await self.col.insert_one(doc)
        return key, doc

    async def get(self, key_id: str, account_id: str | None = None) -> dict[str, Any] | None:
        query: dict[str, Any] = {"_id": key_id}
        if account_id:
            query["account_id"] = account_id
        return await self.col.find_one(query)

    async def set_controls(self, key_id: str, account_id: str | None = None,
                           **controls: Any) -> dict[str, Any] | None:
        """Replace a live key's controls (applied everywhere within auth.key_cache_ttl)."""
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise ValueError(f"unknown key controls {sorted(unknown)}")
        query: dict[str, Any] = {"_id": key_id, "revoked_at": None}
        if account_id:
            query["account_id"] = account_id
        return await self.col.find_one_and_update(query, {"$set": controls},
                                                  return_document=ReturnDocument.AFTER)

    async def by_hash(self, sha256: str) -> dict[str, Any] | None:
        return await self.col.find_one({"sha256": sha256})

    async def for_account(self, account_id: str, include_revoked: bool = True) -> list[dict]:
        query: dict[str, Any] = {"account_id": account_id}
        if not include_revoked:
            query["revoked_at"] = None
        return [d async for d in self.col.find(query).sort("created_at", 1)]

    async def all(self) -> list[dict[str, Any]]:
        return [d async for d in self.col.find({}).sort("created_at", 1)]

    async def revoke(self, key_id_or_prefix: str, account_id: str | None = None) -> int:
        """Revoke by id or display prefix (optionally only within one account)."""
        query: dict[str, Any] = {"$or": [{"_id": key_id_or_prefix}, {"prefix": key_id_or_prefix}],
                                 "revoked_at": None}
        if account_id:
            query["account_id"] = account_id
        result = await self.col.update_many(query, {"$set": {"revoked_at": now()}})
        return result.modified_count

    async def revoke_all(self, account_id: str) -> int:
        result = await self.col.update_many({"account_id": account_id, "revoked_at": None},
                                            {"$set": {"revoked_at": now()}})
        return result.modified_count

    async def touch(self, last_used: dict[str, datetime]) -> None:
        """Record last-used times (batched from usage events; never on the hot path)."""
        if last_used:
            await self.col.bulk_write([UpdateOne({"_id": key_id},
                                                 {"$max": {"last_used_at": when}})
                                       for key_id, when in last_used.items()], ordered=False)
