"""Usage metadata: raw events and daily rollups. Never any prompt or completion text."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne

# The only fields a usage event may carry. Anything else is dropped before storage.
EVENT_FIELDS = frozenset({
    "request_id", "account_id", "key_id", "model", "kind", "transport", "status", "error_code",
    "prompt_tokens", "completion_tokens", "estimated", "ttft_ms", "duration_ms", "ts",
})


class UsageStore:
    """usage_events (one per request) and usage_daily (per account/key/model/day)."""

    def __init__(self, db) -> None:
        self.events = db["usage_events"]
        self.daily = db["usage_daily"]

    async def init(self) -> None:
        await self.events.create_index([("account_id", 1), ("ts", -1)])
        await self.events.create_index([("key_id", 1), ("ts", -1)])
        await self.daily.create_index([("account_id", 1), ("day", -1)])

    async def write_batch(self, events: list[dict[str, Any]]) -> None:
        """Insert events and fold them into the daily rollups, one update per group."""
        if not events:
            return
        clean = [{k: v for k, v in e.items() if k in EVENT_FIELDS} for e in events]
        await self.events.insert_many(clean, ordered=False)
        groups: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for e in clean:
            day = e["ts"].strftime("%Y-%m-%d")
            g = groups[(e.get("account_id"), e.get("key_id"), e.get("model"), day)]
            g["requests"] += 1
            g["prompt_tokens"] += e.get("prompt_tokens", 0)
            g["completion_tokens"] += e.get("completion_tokens", 0)
            g["errors"] += 0 if e.get("status", 200) < 400 else 1
        ops = [UpdateOne({"_id": f"{a}|{k}|{m}|{d}"},
                         {"$inc": dict(inc), "$setOnInsert": {"account_id": a, "key_id": k,
                                                              "model": m, "day": d}},
                         upsert=True)
               for (a, k, m, d), inc in groups.items()]
        await self.daily.bulk_write(ops, ordered=False)

    async def daily_for_account(self, account_id: str, days: int = 30,
                                today: datetime | None = None) -> list[dict[str, Any]]:
        since = ((today or datetime.now()) - timedelta(days=days - 1)).strftime("%Y-%m-%d")
        cursor = self.daily.find({"account_id": account_id, "day": {"$gte": since}})
        return [d async for d in cursor.sort("day", 1)]

    async def totals_for_day(self, day: str) -> list[dict[str, Any]]:
        """Per-account sums of one day's rollups: requests, errors, tokens."""
        totals: dict[str, dict[str, int]] = {}
        async for d in self.daily.find({"day": day}):
            t = totals.setdefault(d["account_id"], {"requests": 0, "errors": 0, "tokens": 0})
            t["requests"] += d.get("requests", 0)
            t["errors"] += d.get("errors", 0)
            t["tokens"] += d.get("prompt_tokens", 0) + d.get("completion_tokens", 0)
        return [{"account_id": a, **t} for a, t in totals.items()]

    async def events_for_account(self, account_id: str, limit: int = 10_000) -> list[dict]:
        cursor = self.events.find({"account_id": account_id}, {"_id": 0})
        return [d async for d in cursor.sort("ts", -1).limit(limit)]
