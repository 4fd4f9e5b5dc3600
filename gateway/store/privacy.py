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
        daily = [d async for d in db["usage_daily"].find(
            {"account_id": account_id}, {"_id": 0, "applied": 0}).sort("day", 1)]
        hourly = [d async for d in db["usage_hourly"].find(
            {"account_id": account_id}, {"_id": 0, "applied": 0}).sort("hour", 1)]
        mail = [d async for d in db["mail_outbox"].find(
            {"account_id": account_id}, {"body": 0, "last_error": 0}).sort("created_at", 1)]
        audit = [d async for d in db["audit_log"].find(
            {"target_id": account_id}, {"actor_id": 0}).sort("at", 1)]
        sessions = await db["sessions"].count_documents({"account_id": account_id})
        return {"account": account, "api_keys": keys, "usage_daily": daily,
                "usage_hourly": hourly, "emails": mail, "admin_actions": audit,
                "active_sessions": sessions}

    async def erase(self, account_id: str) -> str:
        """Delete the account's personal data; re-label its usage with a fresh anonymous
        id (totals stay for billing, no link back). Returns the anonymous id."""
        db = self.db
        anon = "anon_" + secrets.token_hex(12)
        await db["sessions"].delete_many({"account_id": account_id})
        await db["password_resets"].delete_many({"account_id": account_id})
        await db["mail_outbox"].delete_many({"account_id": account_id})
        key_ids = [k["_id"] async for k in db["api_keys"].find({"account_id": account_id},
                                                                 {"_id": 1})]
        await db["limit_counters"].delete_many(     # per-key quota windows
            {"_id": {"$in": [f"q:{kind}:key:{k}" for k in key_ids for kind in ("m", "d")]}})
        await db["api_keys"].delete_many({"account_id": account_id})
        # Quota windows are keyed "q:<kind>:<account>", stream slots "slots:<account>",
        # sign-in throttles by hashes and IPs (all short-lived).
        pattern = f":{re.escape(account_id)}(:|$)"
        await db["limit_counters"].delete_many({"_id": {"$regex": pattern}})
        await db["limit_slots"].delete_many({"_id": {"$regex": pattern}})
        for name, period in (("usage_hourly", "hour"), ("usage_daily", "day")):
            await _relabel(db[name], account_id, anon, period)
        await db["accounts"].delete_one({"_id": account_id})
        return anon


COUNTERS_SKIP = ("_id", "account_id", "key_id", "model", "hour", "day", "applied")


async def _relabel(coll, account_id: str, anon: str, period: str) -> None:
    """Move an account's usage rollups to anonymous ones (one per model and period, no
    key): the totals stay for billing, nothing links them to the person."""
    old = [d async for d in coll.find({"account_id": account_id})]
    if not old:
        return
    merged: dict[str, dict] = {}
    for d in old:
        stamp = d[period].isoformat() if period == "hour" else d[period]
        doc = merged.setdefault(f"{anon}|-|{d.get('model')}|{stamp}", {
            "fields": {"account_id": anon, "key_id": None, "model": d.get("model"),
                       "day": d.get("day"), **({"hour": d["hour"]} if period == "hour" else {})},
            "inc": {}})
        _add_nested(doc["inc"], {k: v for k, v in d.items() if k not in COUNTERS_SKIP})
    await coll.bulk_write([UpdateOne({"_id": _id}, {"$inc": m["inc"],
                                                    "$setOnInsert": m["fields"]}, upsert=True)
                           for _id, m in merged.items()], ordered=False)
    await coll.delete_many({"_id": {"$in": [d["_id"] for d in old]}})


def _add_nested(into: dict, counts: dict, prefix: str = "") -> None:
    """Flatten nested counters (histograms) into dotted ``$inc`` paths and add them."""
    for k, v in counts.items():
        if isinstance(v, dict):
            _add_nested(into, v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            into[prefix + k] = into.get(prefix + k, 0) + v
