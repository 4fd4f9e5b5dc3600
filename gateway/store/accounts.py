"""Accounts collection: identity, tier, status and roles."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

STATUSES = ("pending", "active", "suspended", "rejected", "closed")


def now() -> datetime:
    return datetime.now(UTC)


class Accounts:
    """Account records; email is unique (lower-cased)."""

    def __init__(self, db) -> None:
        self.col = db["accounts"]

    async def init(self) -> None:
        await self.col.create_index("email", unique=True)
        await self.col.create_index("status")

    async def get(self, account_id: str) -> dict[str, Any] | None:
        return await self.col.find_one({"_id": account_id})

    async def by_email(self, email: str) -> dict[str, Any] | None:
        return await self.col.find_one({"email": email.strip().lower()})

    async def create(self, email: str, *, tier: str, status: str = "pending",
                     roles: list[str] | None = None, **fields: Any) -> dict[str, Any]:
        """Insert a new account; raises DuplicateKeyError if the email is taken."""
        doc = {"_id": "acc_" + secrets.token_hex(12), "email": email.strip().lower(),
               "tier": tier, "status": status, "roles": roles or [],
               "created_at": now(), "updated_at": now(), **fields}
        await self.col.insert_one(doc)
        return doc

    async def ensure(self, email: str, *, tier: str) -> dict[str, Any]:
        """Return the account with this email, creating a minimal active one if needed."""
        existing = await self.by_email(email)
        if existing:
            return existing
        try:
            return await self.create(email, tier=tier, status="active")
        except DuplicateKeyError:
            return await self.by_email(email)

    async def update(self, account_id: str, **fields: Any) -> dict[str, Any] | None:
        fields["updated_at"] = now()
        return await self.col.find_one_and_update(
            {"_id": account_id}, {"$set": fields}, return_document=ReturnDocument.AFTER)

    async def list(self, status: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        query = {"status": status} if status else {}
        return [d async for d in self.col.find(query).sort("created_at", 1).limit(limit)]
