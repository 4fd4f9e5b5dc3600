"""Exact limit counters and concurrent-stream leases, without transactions.

Each window is one document per (subject, window), with one field per limit counted
in it (e.g. requests and tokens of one minute). Taking quota is a single conditional
upsert: ``find_one_and_update({_id, f: {$not: {$gt: limit - cost}}, ...},
{$inc: {f: cost, ...}}, upsert)``. When any field would pass its limit, the filter
misses, the upsert tries to insert the same ``_id`` and fails with a duplicate-key
error: the request is denied and nothing is counted. MongoDB applies single-document
updates atomically, so this never over-admits, across any number of gateway processes.

Concurrent-stream slots are lease documents with an expiry that the holder renews;
a crashed process's leases stop counting once they expire.
"""
from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError


class Counters:
    """limit_counters and limit_leases collections."""

    def __init__(self, db) -> None:
        self.counters = db["limit_counters"]
        self.leases = db["limit_leases"]

    async def init(self) -> None:
        await self.counters.create_index("expires_at", expireAfterSeconds=0)
        await self.leases.create_index([("subject", 1), ("expires_at", 1)])
        await self.leases.create_index("expires_at", expireAfterSeconds=0)

    async def take(self, window_id: str, costs: dict[str, tuple[int, int]],
                   expires_at: datetime) -> dict | None:
        """Add every ``field: (cost, limit)`` if all stay within their limits (one round
        trip, all or nothing). Returns the window's new values, or None if refused."""
        if any(cost > limit for cost, limit in costs.values()):
            return None
        query: dict = {"_id": window_id}
        for field, (cost, limit) in costs.items():
            query[field] = {"$not": {"$gt": limit - cost}}   # a missing field counts as 0
        try:
            return await self.counters.find_one_and_update(
                query, {"$inc": {f: c for f, (c, _) in costs.items()},
                        "$setOnInsert": {"expires_at": expires_at}},
                upsert=True, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            return None

    async def add(self, window_id: str, amounts: dict[str, int], expires_at: datetime) -> None:
        """Add usage beyond what was reserved (no limit check; later requests pay for it)."""
        amounts = {f: a for f, a in amounts.items() if a > 0}
        if amounts:
            await self.counters.update_one({"_id": window_id},
                                           {"$inc": amounts,
                                            "$setOnInsert": {"expires_at": expires_at}},
                                           upsert=True)

    async def give_back(self, window_id: str, amounts: dict[str, int]) -> None:
        """Return unused quota (each refund is at most what the same request took)."""
        amounts = {f: -a for f, a in amounts.items() if a > 0}
        if amounts:
            await self.counters.update_one({"_id": window_id}, {"$inc": amounts})

    async def values(self, window_id: str) -> dict[str, int]:
        doc = await self.counters.find_one({"_id": window_id}) or {}
        return {k: int(v) for k, v in doc.items() if k not in ("_id", "expires_at")}

    async def acquire_lease(self, subject: str, cap: int, ttl: float) -> str | None:
        """Take one of ``cap`` concurrent slots for ``subject``; None when all are taken.

        Insert first, then count live leases: if more than ``cap`` are live, remove ours.
        Whoever inserted last sees every other lease, so the cap is never exceeded;
        racing requests may all back off (brief under-admission), never over-admit.
        """
        lease_id = "lease_" + secrets.token_hex(12)
        now = datetime.now(UTC)
        await self.leases.insert_one({"_id": lease_id, "subject": subject, "created_at": now,
                                      "expires_at": now + timedelta(seconds=ttl)})
        live = await self.leases.count_documents({"subject": subject, "expires_at": {"$gt": now}})
        if live > cap:
            await self.leases.delete_one({"_id": lease_id})
            return None
        return lease_id

    async def renew_leases(self, lease_ids: list[str], ttl: float) -> None:
        if lease_ids:
            until = datetime.now(UTC) + timedelta(seconds=ttl)
            await self.leases.update_many({"_id": {"$in": lease_ids}},
                                          {"$set": {"expires_at": until}})

    async def release_lease(self, lease_id: str) -> None:
        await self.leases.delete_one({"_id": lease_id})

    async def live_leases(self, subject: str) -> int:
        return await self.leases.count_documents(
            {"subject": subject, "expires_at": {"$gt": datetime.now(UTC)}})
