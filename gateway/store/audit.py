"""The audit log of admin actions: who did what to which account, when. Never secrets
(no passwords, keys or tokens), only ids, the action and small details."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any


class AuditLog:
    """The ``audit_log`` collection (append-only)."""

    def __init__(self, db) -> None:
        self.col = db["audit_log"]

    async def init(self) -> None:
        await self.col.create_index([("at", -1)])
        await self.col.create_index("target_id")

    async def record(self, actor_id: str | None, actor_email: str, action: str,
                     target_id: str | None = None, **details: Any) -> dict[str, Any]:
        doc = {"_id": "aud_" + secrets.token_hex(12), "at": datetime.now(UTC),
               "actor_id": actor_id, "actor": actor_email, "action": action,
               "target_id": target_id, "details": details}
        await self.col.insert_one(doc)
        return doc

    async def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        return [d async for d in self.col.find({}).sort("at", -1).limit(limit)]

    async def for_target(self, target_id: str) -> list[dict[str, Any]]:
        return [d async for d in self.col.find({"target_id": target_id}).sort("at", 1)]
