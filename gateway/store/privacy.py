"""Personal-data operations that span collections: the export of everything held about
one account, and its erasure (delete personal data, anonymise usage kept for billing)."""
from __future__ import annotations

import re
import secrets
from typing import Any

from pymongo import UpdateOne


class Privacy:
    """Cross-collection export and erasure for one account."""

    def __init__(self, db) -> None:
        self.db = db

    async def init(self) -> None:
        pass

    async def export(self, account_id: str) -> dict[str, Any]:
        """Everything held about an account (no password hash, no key hashes)."""
        db = self.db
        account = await db["accounts"].find_one({"_id": account_id},
                                                {"password_hash": 0})
        keys = [d async for d in db["api_keys"].find({"account_id": account_id},
                                                      {"sha256": 0}).sort("created_at", 1)]
        daily = [d async for d in db["usage_daily"].find({"account_id": account_id},
                                                         {"_id": 0}).sort("day", 1)]
        events = [d async for d in db["usage_events"].find({"account_id": account_id},
                                                           {"_id": 0}).sort("ts", 1)]
        mail = [d async for d in db["mail_outbox"].find(
            {"account_id": account_id}, {"body": 0, "last_error": 0}).sort("created_at", 1)]
        audit = [d async for d in db["audit_log"].find(
            {"target_id": account_id}, {"actor_id": 0}).sort("at", 1)]
        sessions = await db["sessions"].count_documents({"account_id": account_id})
        return {"account": account, "api_keys": keys, "usage_daily": daily,
                "usage_events": events, "emails": mail, "admin_actions": audit,
                "active_sessions": sessions}

    async def erase(self, account_id: str) -> str:
        """Delete the account's personal data; re-label its usage with a fresh anonymous
        id (totals stay for billing, no link back). Returns the anonymous id."""
        db = self.db
        anon = "anon_" + secrets.token_hex(12)
        await db["sessions"].delete_many({"account_id": account_id})
        await db["password_resets"].delete_many({"account_id": account_id})
        await db["mail_outbox"].delete_many({"account_id": account_id})
        await db["api_keys"].delete_many({"account_id": account_id})
        # Limit windows are keyed "<window>:<account>:<time>", stream slots
        # "streams:<account>" (all short-lived).
        pattern = f":{re.escape(account_id)}(:|$)"
        await db["limit_counters"].delete_many({"_id": {"$regex": pattern}})
        await db["limit_slots"].delete_many({"_id": {"$regex": pattern}})
        await db["usage_events"].update_many({"account_id": account_id},
                                             {"$set": {"account_id": anon, "key_id": None}})
        old = [d async for d in db["usage_daily"].find({"account_id": account_id})]
        if old:
            ops = [UpdateOne({"_id": f"{anon}|-|{d.get('model')}|{d['day']}"},
                             {"$inc": {k: d.get(k, 0) for k in
                                       ("requests", "prompt_tokens", "completion_tokens",
                                        "errors")},
                              "$setOnInsert": {"account_id": anon, "key_id": None,
                                               "model": d.get("model"), "day": d["day"]}},
                             upsert=True) for d in old]
            await db["usage_daily"].bulk_write(ops, ordered=False)
            await db["usage_daily"].delete_many({"_id": {"$in": [d["_id"] for d in old]}})
        await db["accounts"].delete_one({"_id": account_id})
        return anon
