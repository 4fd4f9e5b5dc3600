"""Password-reset tokens: single use, short-lived, stored only as SHA-256."""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta



def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PasswordResets:
    """The ``password_resets`` collection."""

    def __init__(self, db) -> None:
        self.col = db["password_resets"]

    async def init(self) -> None:
        await self.col.create_index("account_id")
        await self.col.create_index("expires_at", expireAfterSeconds=0)

    async def create(self, account_id: str, ttl: float) -> str:
        """A new token for the account (earlier ones stop working)."""
        await self.col.delete_many({"account_id": account_id})
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        await self.col.insert_one({"_id": _hash(token), "account_id": account_id,
                                   "created_at": now,
                                   "expires_at": now + timedelta(seconds=ttl)})
        return token

    async def peek(self, token: str) -> dict | None:
        doc = await self.col.find_one({"_id": _hash(token or "")})
        if doc is None or doc["expires_at"] <= datetime.now(UTC):
            return None
        return doc

    async def use(self, token: str) -> str | None:
        """Consume a valid token (once): the account id, or None."""
        doc = await self.col.find_one_and_delete({"_id": _hash(token or "")})
        if doc is None or doc["expires_at"] <= datetime.now(UTC):
            return None
        return doc["account_id"]

    async def delete_for_account(self, account_id: str) -> None:
        await self.col.delete_many({"account_id": account_id})
