"""Exact limit counters and concurrent-stream leases, without transactions.

Each window is one document per (subject, window), with one field per limit counted
in it (e.g. requests and tokens of one minute). Taking quota is a single conditional
upsert: ``find_one_and_update({_id, f: {$not: {$gt: limit - cost}}, ...},
{$inc: {f: cost, ...}}, upsert)``. When any field would pass its limit, the filter
misses, the upsert tries to insert the same ``_id`` and fails with a duplicate-key
error: the request is denied and nothing is counted. MongoDB applies single-document
updates atomically, so this never over-admits, across any number of gateway processes.

Concurrent-stream slots are leases kept in one document per subject:
``{_id: subject, leases: [{id, exp}, ...]}``. Taking a slot is one conditional push,
``update_one({_id, "leases.<cap-1>": {$exists: false}}, {$push: ...}, upsert)``: the
array can never hold more than ``cap`` leases, whatever the concurrency. Holders renew
their leases' expiry; a crashed process's leases are pulled out once they have expired,
when the next request finds the array full.
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
        self.slots = db["limit_slots"]

    async def init(self) -> None:
        await self.counters.create_index("expires_at", expireAfterSeconds=0)

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
        """Take one of ``cap`` concurrent slots for ``subject``: a lease id, or None when
        all are taken. One round trip, plus one more only when expired leases must go."""
        lease_id = "lease_" + secrets.token_hex(12)
        now = datetime.now(UTC)
        lease = {"id": lease_id, "exp": now + timedelta(seconds=ttl)}
        if await self._push(subject, cap, lease):
            return lease_id
        dropped = await self.slots.update_one({"_id": subject},
                                              {"$pull": {"leases": {"exp": {"$lte": now}}}})
        if dropped.modified_count and await self._push(subject, cap, lease):
            return lease_id
        return None

    async def _push(self, subject: str, cap: int, lease: dict) -> bool:
        try:
            await self.slots.update_one({"_id": subject, f"leases.{cap - 1}": {"$exists": False}},
                                        {"$push": {"leases": lease}}, upsert=True)
            return True
        except DuplicateKeyError:
            return False

    async def renew_leases(self, lease_ids: list[str], ttl: float) -> None:
        """Push the expiry of these leases (of any subjects) ``ttl`` seconds ahead."""
        if lease_ids:
            until = datetime.now(UTC) + timedelta(seconds=ttl)
            await self.slots.update_many({"leases.id": {"$in": lease_ids}},
                                         {"$set": {"leases.$[l].exp": until}},
                                         array_filters=[{"l.id": {"$in": lease_ids}}])

    async def release_lease(self, subject: str, lease_id: str) -> None:
        await self.slots.update_one({"_id": subject}, {"$pull": {"leases": {"id": lease_id}}})

    async def live_leases(self, subject: str) -> int:
        doc = await self.slots.find_one({"_id": subject}) or {}
        now = datetime.now(UTC)
        return sum(1 for lease in doc.get("leases", []) if lease["exp"] > now)
