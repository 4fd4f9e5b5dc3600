"""Dashboard sessions, held server-side. The browser's only cookie carries a random
token; the database keeps just its SHA-256 (``_id``), the account, the CSRF token and
the idle and absolute expiry times."""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """The ``sessions`` collection."""

    def __init__(self, db) -> None:
        self.col = db["sessions"]

    async def init(self) -> None:
        await self.col.create_index("account_id")
        await self.col.create_index("expires_at", expireAfterSeconds=0)

    async def create(self, account_id: str | None, *, idle: float, absolute: float,
                     now: datetime | None = None) -> tuple[str, dict[str, Any]]:
        """A new session (anonymous when ``account_id`` is None): (cookie token, record)."""
        now = now or datetime.now(UTC)
        token = secrets.token_urlsafe(32)
        absolute_at = now + timedelta(seconds=absolute)
        doc = {"_id": _hash(token), "account_id": account_id,
               "csrf": secrets.token_urlsafe(32), "created_at": now, "last_seen": now,
               "absolute_expires_at": absolute_at,
               "expires_at": min(now + timedelta(seconds=idle), absolute_at)}
        await self.col.insert_one(doc)
        return token, doc

    async def get(self, token: str, *, idle: float,
                  now: datetime | None = None) -> dict[str, Any] | None:
        """The live session for a cookie token (sliding its idle expiry), or None."""
        if not token or len(token) > 200:
            return None
        now = now or datetime.now(UTC)
        doc = await self.col.find_one({"_id": _hash(token)})
        if doc is None:
            return None
        if doc["expires_at"] <= now or doc["absolute_expires_at"] <= now:
            await self.col.delete_one({"_id": doc["_id"]})
            return None
        if (now - doc["last_seen"]).total_seconds() > min(60.0, idle / 10):
            expires = min(now + timedelta(seconds=idle), doc["absolute_expires_at"])
            await self.col.update_one({"_id": doc["_id"]},
                                      {"$set": {"last_seen": now, "expires_at": expires}})
            doc["expires_at"] = expires
        return doc

    async def delete(self, session_id: str) -> None:
        await self.col.delete_one({"_id": session_id})

    async def delete_for_account(self, account_id: str) -> int:
        result = await self.col.delete_many({"account_id": account_id})
        return result.deleted_count

    async def set_flash(self, session_id: str, message: str) -> None:
        """A one-time notice shown on the next page (kept server-side, not in a cookie)."""
        await self.col.update_one({"_id": session_id}, {"$set": {"flash": message}})

    async def pop_flash(self, session: dict[str, Any]) -> str | None:
        message = session.get("flash")
        if message:
            await self.col.update_one({"_id": session["_id"]}, {"$unset": {"flash": ""}})
        return message
