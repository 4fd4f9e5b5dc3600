"""Accounts collection: identity, tier, status and roles."""
from __future__ import annotations

import base64
import re
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
        await self.col.create_index([("created_at", -1), ("_id", -1)])

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

    async def search(self, *, q: str = "", status: str | None = None, tier: str | None = None,
                     limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """A page of accounts, newest first (created_at, then _id, both descending: a
        stable order), filtered by email substring, status and tier. Returns (accounts,
        cursor of the next page or None). Raises ValueError for a malformed cursor."""
        query = self._filter(q, status, tier)
        if cursor:
            created, last_id = decode_cursor(cursor)
            query = {"$and": [query, {"$or": [{"created_at": {"$lt": created}},
                                              {"created_at": created,
                                               "_id": {"$lt": last_id}}]}]}
        docs = [d async for d in self.col.find(query, {"password_hash": 0})
                .sort([("created_at", -1), ("_id", -1)]).limit(limit + 1)]
        more = len(docs) > limit
        docs = docs[:limit]
        return docs, (encode_cursor(docs[-1]) if more and docs else None)

    async def count_matching(self, *, q: str = "", status: str | None = None,
                             tier: str | None = None) -> int:
        return await self.col.count_documents(self._filter(q, status, tier))

    @staticmethod
    def _filter(q: str, status: str | None, tier: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if q.strip():
            query["email"] = {"$regex": re.escape(q.strip().lower())}
        if status:
            query["status"] = status
        if tier:
            query["tier"] = tier
        return query

    async def change_email(self, account_id: str, email: str) -> dict[str, Any] | None:
        """Correct the address; raises DuplicateKeyError when another account has it."""
        return await self.update(account_id, email=email.strip().lower())

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


def encode_cursor(doc: dict[str, Any]) -> str:
    """An opaque page cursor: the last account's creation time and id."""
    raw = f"{doc['created_at'].astimezone(UTC).isoformat()}|{doc['_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, account_id = raw.split("|", 1)
        when = datetime.fromisoformat(created)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed cursor") from None
    if not account_id.startswith("acc_") or when.tzinfo is None:
        raise ValueError("malformed cursor")
    return when, account_id
