"""Exact limit counters and concurrent-stream leases, without transactions.

Each counter is one document per (subject, limit, window). Taking quota is a single
conditional upsert: ``update_one({_id, n <= limit - cost}, {$inc: {n: cost}}, upsert)``.
When the window is already too full, the filter misses, the upsert tries to insert
the same ``_id`` and fails with a duplicate-key error: the request is denied. MongoDB
applies single-document updates atomically, so this never over-admits, across any
number of gateway processes.

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

    async def take(self, counter_id: str, cost: int, limit: int,
                   expires_at: datetime) -> int | None:
        """Add ``cost`` if the counter stays within ``limit``: the new value, or None if not."""
        if cost > limit:
            return None
        try:
            doc = await self.counters.find_one_and_update(
                {"_id": counter_id, "n": {"$lte": limit - cost}},
                {"$inc": {"n": cost}, "$setOnInsert": {"expires_at": expires_at}},
                upsert=True, return_document=ReturnDocument.AFTER)
            return int(doc["n"])
        except DuplicateKeyError:
            return None

    async def add(self, counter_id: str, amount: int, expires_at: datetime) -> None:
        """Add usage beyond what was reserved (no limit check; it counts against later requests)."""
        if amount > 0:
            await self.counters.update_one({"_id": counter_id},
                                           {"$inc": {"n": amount},
                                            "$setOnInsert": {"expires_at": expires_at}},
                                           upsert=True)

    async def give_back(self, counter_id: str, amount: int) -> None:
        """Return unused quota (a refund; never below zero in practice)."""
        if amount > 0:
            await self.counters.update_one({"_id": counter_id, "n": {"$gte": amount}},
                                           {"$inc": {"n": -amount}})

    async def value(self, counter_id: str) -> int:
        doc = await self.counters.find_one({"_id": counter_id})
        return int(doc["n"]) if doc else 0

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
