"""The email outbox: every message is stored before it is sent, so an SMTP outage
loses nothing. Senders claim due messages one at a time with a lease (safe with
several gateway processes), and mark them sent or schedule a retry.

Bodies arrive sealed (encrypted by ``plugins.mail.mailer.MailSeal``; ``key_id`` names the
key) and are erased once a message is sent or given up: nothing readable stays."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument


class Outbox:
    """The ``mail_outbox`` collection."""

    def __init__(self, db) -> None:
        self.col = db["mail_outbox"]

    async def init(self) -> None:
        await self.col.create_index([("status", 1), ("next_attempt_at", 1)])
        await self.col.create_index("account_id")

    async def enqueue(self, to: str, subject: str, body: str, *, kind: str = "",
                      account_id: str | None = None,
                      key_id: str | None = None) -> dict[str, Any]:
        """Queue a message; ``body`` is sealed with the key ``key_id`` (None: clear)."""
        now = datetime.now(UTC)
        doc = {"_id": "mail_" + secrets.token_hex(12), "to": to, "subject": subject,
               "body": body, "key_id": key_id, "kind": kind, "account_id": account_id,
               "status": "pending",
               "attempts": 0, "created_at": now, "next_attempt_at": now, "last_error": None}
        await self.col.insert_one(doc)
        return doc

    async def claim(self, lease_seconds: float, now: datetime | None = None, *,
                    key_id: str | None = None) -> dict | None:
        """Take the oldest due message that this sender can open (sealed with ``key_id``,
        or clear); it is not due for others for ``lease_seconds``."""
        now = now or datetime.now(UTC)
        return await self.col.find_one_and_update(
            {"status": "pending", "next_attempt_at": {"$lte": now},
             "key_id": {"$in": [key_id, None]}},
            {"$set": {"next_attempt_at": now + timedelta(seconds=lease_seconds)},
             "$inc": {"attempts": 1}},
            sort=[("next_attempt_at", 1)], return_document=ReturnDocument.AFTER)

    async def mark_sent(self, mail_id: str) -> None:
        """Sent: keep the metadata, drop the message body."""
        await self.col.update_one({"_id": mail_id}, {"$set": {
            "status": "sent", "sent_at": datetime.now(UTC), "body": "", "last_error": None}})

    async def retry_later(self, mail_id: str, delay: float, error: str,
                          give_up: bool = False) -> None:
        fields: dict[str, Any] = {"last_error": error[:300],
                                  "next_attempt_at": datetime.now(UTC) + timedelta(seconds=delay)}
        if give_up:
            fields.update(status="failed", body="")
        await self.col.update_one({"_id": mail_id}, {"$set": fields})

    async def find(self, **query: Any) -> list[dict[str, Any]]:
        return [d async for d in self.col.find(query).sort("created_at", 1)]
