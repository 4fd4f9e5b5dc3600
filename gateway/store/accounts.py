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

    async def create_if_absent(self, email: str, *, tier: str,
                               **fields: Any) -> dict[str, Any] | None:
        """Insert a new account, or None when the email is taken (one insert attempt
        either way: the unique index decides, so both outcomes cost the same)."""
        try:
            return await self.create(email, tier=tier, **fields)
        except DuplicateKeyError:
            return None

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

    # --- dashboard: passwords, status changes, retention -------------------------------

    async def set_status(self, account_id: str, status: str,
                         when: datetime | None = None) -> dict[str, Any] | None:
        """Change the status and remember when (retention counts from that moment)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return await self.update(account_id, status=status, status_changed_at=when or now())

    async def has_admin(self) -> bool:
        return await self.col.find_one({"roles": "admin"}) is not None

    async def due_for_retention(self, statuses: tuple[str, ...],
                                before: datetime) -> list[dict[str, Any]]:
        """Accounts in one of ``statuses`` since before ``before`` (retention is due)."""
        cursor = self.col.find({"status": {"$in": list(statuses)},
                                "status_changed_at": {"$lte": before}})
        return [d async for d in cursor]

    async def create_admin_if_absent(self, email: str, *, tier: str,
                                     password_hash: str) -> dict | None:
        """Create an active admin unless the email is taken (then None)."""
        try:
            return await self.create(email, tier=tier, status="active", roles=["admin"],
                                     password_hash=password_hash, status_changed_at=now())
        except DuplicateKeyError:
            return None

    async def create_or_promote_admin(self, email: str, *, tier: str,
                                      password_hash: str | None) -> tuple[dict, bool]:
        """Make ``email`` an active admin: ``(account, created)``. An existing account
        gets the admin role (and the password, when one is given)."""
        try:
            return await self.create(email, tier=tier, status="active", roles=["admin"],
                                     password_hash=password_hash,
                                     status_changed_at=now()), True
        except DuplicateKeyError:
            account = await self.by_email(email)
            fields: dict[str, Any] = {"roles": sorted({*account.get("roles", []), "admin"}),
                                      "status": "active", "status_changed_at": now()}
            if password_hash:
                fields["password_hash"] = password_hash
            return await self.update(account["_id"], **fields), False

    async def count(self, status: str | None = None) -> int:
        return await self.col.count_documents({"status": status} if status else {})
