"""Usage metadata as rollups: counters per (account, key, model) per hour and per day.

Never any prompt or completion text, and never one document per request: a flush adds
a whole batch of requests to each affected rollup with one ``$inc``, so the collections
grow with keys x calendar periods, not with traffic.

- ``usage_hourly``: one document per (account, key, model, UTC hour); kept for
  ``[usage] hourly_days`` days, then deleted (the daily rollup keeps the totals).
- ``usage_daily``: one document per (account, key, model, UTC day); kept until the
  account's data is erased (re-labelled anonymously, see ``Privacy.erase``).

Exactly once: every flush is a batch with a unique id. A rollup remembers the ids of
the last ``APPLIED_KEEP`` batches applied to it, and an update only matches a rollup
that has not seen its batch, so a batch retried after a lost acknowledgement, or
replayed from the spool file after a restart, is never counted twice.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

# Buckets (upper bounds, ms) of the latency histograms kept per rollup.
TTFT_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000)
DURATION_BUCKETS_MS = (1000, 5000, 15000, 60000, 300000)
QUEUE_BUCKETS_MS = (100, 500, 2500, 10000, 60000)
TTFT_HIST_KEYS = tuple(f"le_{b}" for b in TTFT_BUCKETS_MS) + ("le_inf",)
OVERVIEW_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens",
                   "ttft_ms_sum", "ttft_count",
                   *(f"status_{c}xx" for c in range(1, 6)))
# tokens in + out of a rollup (a missing field counts 0, as MongoDB's $add would not)
_TOKENS = {"$add": [{"$ifNull": ["$prompt_tokens", 0]},
                    {"$ifNull": ["$completion_tokens", 0]}]}
# an aggregation's ``_id`` (an account id) joined to that account's email and tier
_JOIN_ACCOUNT = [{"$lookup": {"from": "accounts", "localField": "_id", "foreignField": "_id",
                              "as": "account"}},
                 {"$unwind": {"path": "$account", "preserveNullAndEmptyArrays": True}},
                 {"$project": {"tokens": 1, "requests": 1, "account.email": 1,
                               "account.tier": 1}}]
APPLIED_KEEP = 64      # batch ids a rollup remembers (retries and replays come soon after)
DUPLICATE_KEY = 11000


def bucket(value_ms: float, bounds: tuple[int, ...]) -> str:
    """The histogram field for one latency: ``le_<bound>`` or ``le_inf``."""
    for bound in bounds:
        if value_ms <= bound:
            return f"le_{bound}"
    return "le_inf"


def counts_of(event: dict[str, Any]) -> dict[str, float]:
    """The rollup counters one request adds (metadata only)."""
    status = int(event.get("status") or 200)
    inc: dict[str, float] = {"requests": 1,
                             "prompt_tokens": int(event.get("prompt_tokens") or 0),
                             "completion_tokens": int(event.get("completion_tokens") or 0),
                             f"status_{status // 100}xx": 1}
    if status >= 400:
        inc["errors"] = 1
    if event.get("estimated"):
        inc["estimated"] = 1
    if event.get("queue_ms"):
        inc["queue_ms_sum"] = float(event["queue_ms"])
        inc["queued"] = 1
        inc["queue_hist." + bucket(event["queue_ms"], QUEUE_BUCKETS_MS)] = 1
    if event.get("ttft_ms") is not None:
        inc["ttft_ms_sum"] = float(event["ttft_ms"])
        inc["ttft_count"] = 1
        inc["ttft_hist." + bucket(event["ttft_ms"], TTFT_BUCKETS_MS)] = 1
    if event.get("duration_ms") is not None:
        inc["duration_ms_sum"] = float(event["duration_ms"])
        inc["duration_hist." + bucket(event["duration_ms"], DURATION_BUCKETS_MS)] = 1
    return inc


def rollup_ids(account_id: str | None, key_id: str | None, model: str | None,
               ts: datetime) -> tuple[str, str]:
    """The ``_id`` of the hourly and of the daily rollup one request belongs to."""
    prefix = f"{account_id}|{key_id or '-'}|{model}|"
    return prefix + ts.strftime("%Y-%m-%dT%H"), prefix + ts.strftime("%Y-%m-%d")


class UsageStore:
    """usage_hourly and usage_daily rollups."""

    def __init__(self, db) -> None:
        self.hourly = db["usage_hourly"]
        self.daily = db["usage_daily"]
        self.legacy_events = db["usage_events"]

    async def init(self) -> None:
        await self.hourly.create_index([("account_id", 1), ("hour", -1)])
        await self.hourly.create_index("hour")
        await self.daily.create_index([("account_id", 1), ("day", -1)])
        await self.daily.create_index("day")

    async def apply(self, batch_id: str, rollups: dict[tuple, dict[str, float]]) -> None:
        """Add one batch to the rollups, exactly once per rollup whatever the retries.

        ``rollups`` maps (account, key, model, hour start) to the counters to add."""
        hourly, days = [], {}
        for (account_id, key_id, model, hour), inc in rollups.items():
            hour_id, day_id = rollup_ids(account_id, key_id, model, hour)
            common = {"account_id": account_id, "key_id": key_id, "model": model,
                      "day": hour.strftime("%Y-%m-%d")}
            hourly.append(_once(hour_id, batch_id, inc, {**common, "hour": hour}))
            # A batch that spans an hour boundary has several hourly rollups in one
            # day: they must reach the daily rollup as ONE update, because a second
            # update carrying the same batch id would be taken for a replay and lost.
            day = days.setdefault(day_id, (common, {}))
            add_counts(day[1], inc)
        if hourly:
            await _bulk_once(self.hourly, hourly)
            await _bulk_once(self.daily, [_once(day_id, batch_id, inc, common)
                                          for day_id, (common, inc) in days.items()])

    async def prune_hourly(self, keep_days: float, now: datetime | None = None) -> int:
        """Delete hourly rollups older than ``keep_days`` (the daily ones keep the sums)."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
        return (await self.hourly.delete_many({"hour": {"$lt": cutoff}})).deleted_count

    async def daily_for_account(self, account_id: str, days: int = 30,
                                today: datetime | None = None) -> list[dict[str, Any]]:
        since = ((today or datetime.now()) - timedelta(days=days - 1)).strftime("%Y-%m-%d")
        cursor = self.daily.find({"account_id": account_id, "day": {"$gte": since}},
                                 {"applied": 0})
        return [d async for d in cursor.sort("day", 1)]

    async def hourly_for_account(self, account_id: str) -> list[dict[str, Any]]:
        cursor = self.hourly.find({"account_id": account_id}, {"applied": 0})
        return [d async for d in cursor.sort("hour", 1)]

    async def totals_for_day(self, day: str) -> list[dict[str, Any]]:
        """Per-account sums of one day's rollups: requests, errors, tokens."""
        totals: dict[str, dict[str, int]] = {}
        async for d in self.daily.find({"day": day}, {"applied": 0}):
            t = totals.setdefault(d["account_id"], {"requests": 0, "errors": 0, "tokens": 0})
            t["requests"] += d.get("requests", 0)
            t["errors"] += d.get("errors", 0)
            t["tokens"] += d.get("prompt_tokens", 0) + d.get("completion_tokens", 0)
        return [{"account_id": a, **t} for a, t in totals.items()]

    # -- the operator overview (dashboard/pages_overview.py) ------------------------------
    # Aggregations over the ``hour`` and ``day`` indexes: each reads the rollups of a
    # bounded period (accounts x keys x models per hour or day), never per-request data.

    async def per_model_since(self, since: datetime) -> dict[str, dict[str, float]]:
        """Per model, the sums of the hourly rollups from the hour ``since`` on: requests,
        errors, tokens, statuses (``status_2xx``...) and the time-to-first-token sum,
        count and histogram (``ttft_hist`` as a dict ``le_<bound>`` -> count)."""
        fields = {f: f for f in OVERVIEW_FIELDS}
        fields |= {f"ttft_hist_{b}": f"ttft_hist.{b}" for b in TTFT_HIST_KEYS}
        pipeline = [{"$match": {"hour": {"$gte": since}}},
                    {"$group": {"_id": "$model",
                                **{out: {"$sum": f"${src}"} for out, src in fields.items()}}}]
        result = {}
        async for d in await self.hourly.aggregate(pipeline):
            row = {f: d.get(f) or 0 for f in OVERVIEW_FIELDS}
            row["ttft_hist"] = {b: d.get(f"ttft_hist_{b}") or 0 for b in TTFT_HIST_KEYS}
            result[d["_id"] or "?"] = row
        return result

    async def tokens_per_hour_per_model(self, since: datetime) -> list[dict[str, Any]]:
        """``{hour, model, tokens}`` for each hour from ``since`` on and each model used
        then (tokens in + out, all accounts)."""
        pipeline = [{"$match": {"hour": {"$gte": since}}},
                    {"$group": {"_id": {"hour": "$hour", "model": "$model"},
                                "tokens": {"$sum": _TOKENS}}}]
        return [{"hour": d["_id"]["hour"], "model": d["_id"].get("model") or "?",
                 "tokens": d["tokens"] or 0}
                async for d in await self.hourly.aggregate(pipeline)]

    async def top_accounts(self, since_day: str, limit: int = 10) -> list[dict[str, Any]]:
        """The ``limit`` accounts with the most tokens (in + out) in the daily rollups
        from ``since_day`` (``YYYY-MM-DD``) on: ``{account_id, email, tier, tokens,
        requests}``, most first; email and tier are None for an erased account."""
        pipeline = [{"$match": {"day": {"$gte": since_day}}},
                    {"$group": {"_id": "$account_id", "tokens": {"$sum": _TOKENS},
                                "requests": {"$sum": "$requests"}}},
                    {"$sort": {"tokens": -1, "_id": 1}},
                    {"$limit": int(limit)},
                    *_JOIN_ACCOUNT]
        rows = [{"account_id": d["_id"], "email": (d.get("account") or {}).get("email"),
                 "tier": (d.get("account") or {}).get("tier"),
                 "tokens": d.get("tokens") or 0, "requests": d.get("requests") or 0}
                async for d in await self.daily.aggregate(pipeline)]
        return sorted(rows, key=lambda r: (-r["tokens"], str(r["account_id"])))

    async def per_tier_on(self, day: str) -> dict[str | None, dict[str, int]]:
        """Per tier (each account's CURRENT tier; None for erased accounts), one day's
        daily rollups: ``{tokens, requests, accounts}``."""
        pipeline = [{"$match": {"day": day}},
                    {"$group": {"_id": "$account_id", "tokens": {"$sum": _TOKENS},
                                "requests": {"$sum": "$requests"}}},
                    *_JOIN_ACCOUNT,
                    {"$group": {"_id": "$account.tier", "tokens": {"$sum": "$tokens"},
                                "requests": {"$sum": "$requests"}, "accounts": {"$sum": 1}}}]
        return {d["_id"]: {"tokens": d.get("tokens") or 0, "requests": d.get("requests") or 0,
                           "accounts": d.get("accounts") or 0}
                async for d in await self.daily.aggregate(pipeline)}

    async def total_requests(self) -> int:
        """Requests counted in all daily rollups (benchmarks and tests compare it)."""
        return sum([int(d.get("requests", 0)) async for d in self.daily.find({}, {"requests": 1})])

    async def fold_legacy_events(self) -> int:
        """Fold per-request documents of the old ``usage_events`` collection into hourly
        rollups, then drop it (once; safe to repeat). Their daily sums were already kept
        by the old writer, so only the hourly detail is built. Returns events folded."""
        if "usage_events" not in await self.hourly.database.list_collection_names():
            return 0
        rollups: dict[tuple, dict[str, float]] = {}
        n = 0
        async for event in self.legacy_events.find({}, {"_id": 0}):
            ts = event.get("ts") or datetime.now(UTC)
            hour = ts.replace(minute=0, second=0, microsecond=0)
            key = (event.get("account_id"), event.get("key_id"), event.get("model"), hour)
            add_counts(rollups.setdefault(key, {}), counts_of(event))
            n += 1
        ops = [_once(rollup_ids(a, k, m, h)[0], "legacy-events", inc,
                     {"account_id": a, "key_id": k, "model": m, "hour": h,
                      "day": h.strftime("%Y-%m-%d")})
               for (a, k, m, h), inc in rollups.items()]
        if ops:
            await _bulk_once(self.hourly, ops)
        await self.legacy_events.drop()
        return n


def _once(doc_id: str, batch_id: str, inc: dict[str, float], fields: dict) -> UpdateOne:
    """Add ``inc`` to one rollup unless it has already seen ``batch_id`` (creating it
    with ``fields`` when it does not exist yet)."""
    return UpdateOne({"_id": doc_id, "applied": {"$ne": batch_id}},
                     {"$inc": inc, "$setOnInsert": fields,
                      "$push": {"applied": {"$each": [batch_id], "$slice": -APPLIED_KEEP}}},
                     upsert=True)


def add_counts(into: dict[str, float], inc: dict[str, float]) -> None:
    for field, value in inc.items():
        into[field] = into.get(field, 0) + value


async def _bulk_once(coll, ops: list) -> None:
    """Run idempotent upserts; a duplicate-key error means "this batch was already
    applied to that rollup" and is not an error."""
    try:
        await coll.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
        if others or exc.details.get("writeConcernErrors"):
            raise
