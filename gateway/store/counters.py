"""Exact shared counters without transactions: quota windows, stream slots, and
short-lived counters (sign-in throttles).

Every update here is a single conditional update of one document, which MongoDB
applies atomically, so any number of gateway processes never take more than a limit.

**Quota windows** (``limit_counters``, one document per account and window kind,
reused from one window to the next): ``{_id: "q:m:<account>", window: "202611272042",
requests: n, tokens: n}``. A process *leases* a block of quota with
``{_id, window, f: {$not: {$gt: limit - amount}}}`` + ``$inc``; when the window has
passed, the document is reset in place for the new one. So the number of documents is
bounded by accounts x window kinds, and none is created per minute or per request.

**Stream slots** (``limit_slots``, one document per account): ``{_id: "slots:<account>",
held: n, holders: {<process>: {n, exp}}}``. A process leases ``k`` slots with
``{held: {$not: {$gt: cap - k}}}`` + ``$inc``; it renews the expiry of its holdings while
it lives, and the holdings of a crashed process are taken back by the next process that
finds the slots full, once they have expired.

**Short-lived counters** (``take``/``give_back``, one document per window with a TTL):
for rare events such as sign-in attempts, never for API requests.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

Amounts = dict[str, int]


class Counters:
    """limit_counters and limit_slots collections."""

    def __init__(self, db) -> None:
        self.counters = db["limit_counters"]
        self.slots = db["limit_slots"]

    async def init(self) -> None:
        await self.counters.create_index("expires_at", expireAfterSeconds=0)
        # Stream slots of the old format (one lease document per stream) are obsolete.
        await self.slots.delete_many({"leases": {"$exists": True}})

    # -- quota windows -----------------------------------------------------------------
    async def lease_quota(self, pool_id: str, window: str, want: Amounts, need: Amounts,
                          limits: Amounts) -> tuple[Amounts | None, Amounts, str]:
        """Take ``want`` of each field from the shared window, or as much as is left if
        that still covers ``need``; all fields or none. Returns (what was taken or None,
        the shared counters afterwards, the window taken from: a newer one than asked
        when another process already started it). Usually one round trip."""
        if any(need.get(f, 0) > limits[f] for f in want):
            return None, {}, window
        # Never more than a limit in one take: a missing document is created by it.
        take = {f: min(a, limits[f]) for f, a in want.items() if a > 0}
        for _ in range(4):
            if not take:
                return {}, {}, window
            query: dict = {"_id": pool_id, "window": window}
            for field, amount in take.items():
                query[field] = {"$not": {"$gt": limits[field] - amount}}
            doc = await self.counters.find_one_and_update(
                query, {"$inc": take}, return_document=ReturnDocument.AFTER)
            if doc is not None:
                return take, _values(doc), window
            doc = await self.counters.find_one({"_id": pool_id})
            if doc is None:
                try:
                    await self.counters.insert_one({"_id": pool_id, "window": window, **take})
                    return take, dict(take), window
                except DuplicateKeyError:
                    continue
            if doc.get("window", "") < window:        # a new window: reset in place
                await self.counters.replace_one({"_id": pool_id, "window": doc.get("window")},
                                                {"window": window})
                continue
            if doc["window"] > window:                # our clock is a little behind
                window = doc["window"]
                continue
            values = _values(doc)
            left = {f: limits[f] - values.get(f, 0) for f in take}
            if any(left[f] < need.get(f, 0) for f in take):
                return None, values, window
            take = {f: min(a, left[f]) for f, a in take.items() if min(a, left[f]) > 0}
        return None, {}, window

    async def adjust_quota(self, pool_id: str, window: str, amounts: Amounts) -> None:
        """Add (positive: usage beyond what was leased) or give back (negative: unused
        quota) amounts to a window, if it is still the current one."""
        amounts = {f: a for f, a in amounts.items() if a}
        if amounts:
            await self.counters.update_one({"_id": pool_id, "window": window},
                                           {"$inc": amounts})

    async def quota_values(self, pool_id: str, window: str) -> Amounts:
        """The shared counters of a window (zeros once it has passed)."""
        doc = await self.counters.find_one({"_id": pool_id}) or {}
        return _values(doc) if doc.get("window") == window else {}

    # -- stream slots ------------------------------------------------------------------
    async def lease_slots(self, subject: str, holder: str, want: int, need: int, cap: int,
                          ttl: float) -> int:
        """Lease up to ``want`` (at least ``need``) of ``cap`` slots for ``holder``;
        returns how many were leased (0: none free). Expired holdings of crashed
        processes are reclaimed when the slots are full."""
        want = min(want, cap)       # the upsert below creates a missing document as is
        if need > cap:
            return 0
        for attempt in range(3):
            if want <= 0:
                return 0
            now = datetime.now(UTC)
            try:
                await self.slots.update_one(
                    {"_id": subject, "held": {"$not": {"$gt": cap - want}}},
                    {"$inc": {"held": want, f"holders.{holder}.n": want},
                     "$set": {f"holders.{holder}.exp": now + timedelta(seconds=ttl)}},
                    upsert=True)
                return want
            except DuplicateKeyError:
                pass
            doc = await self.slots.find_one({"_id": subject}) or {}
            if attempt == 0 and await self._reclaim_expired(subject, doc, now):
                doc = await self.slots.find_one({"_id": subject}) or {}
            free = cap - int(doc.get("held", 0))
            if free < need:
                return 0
            want = min(want, free)
        return 0

    async def _reclaim_expired(self, subject: str, doc: dict, now: datetime) -> bool:
        reclaimed = False
        for holder, h in (doc.get("holders") or {}).items():
            if h.get("exp") and h["exp"] <= now:
                result = await self.slots.update_one(
                    {"_id": subject, f"holders.{holder}.exp": h["exp"]},
                    {"$inc": {"held": -int(h.get("n", 0))}, "$unset": {f"holders.{holder}": ""}})
                reclaimed |= bool(result.modified_count)
        return reclaimed

    async def return_slots(self, subject: str, holder: str, count: int, held: int) -> None:
        """Give back ``count`` of the ``held`` slots this holder has (all: forget it)."""
        if count <= 0:
            return
        update: dict = {"$inc": {"held": -count, f"holders.{holder}.n": -count}}
        if count >= held:
            update = {"$inc": {"held": -count}, "$unset": {f"holders.{holder}": ""}}
        await self.slots.update_one({"_id": subject, f"holders.{holder}.n": held}, update)

    async def renew_slots(self, holder: str, ttl: float) -> int:
        """Push the expiry of all of this holder's slots ``ttl`` seconds ahead; returns
        how many subjects it still holds slots of."""
        result = await self.slots.update_many(
            {f"holders.{holder}": {"$exists": True}},
            {"$set": {f"holders.{holder}.exp": datetime.now(UTC) + timedelta(seconds=ttl)}})
        return result.matched_count

    async def live_leases(self, subject: str) -> int:
        """Slots held by live (unexpired) holders."""
        doc = await self.slots.find_one({"_id": subject}) or {}
        now = datetime.now(UTC)
        return sum(int(h.get("n", 0)) for h in (doc.get("holders") or {}).values()
                   if h.get("exp") and h["exp"] > now)

    # -- short-lived counters (sign-in throttles) ---------------------------------------
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

    async def give_back(self, window_id: str, amounts: dict[str, int]) -> None:
        """Take back what ``take`` added (each refund at most what was taken)."""
        amounts = {f: -a for f, a in amounts.items() if a > 0}
        if amounts:
            await self.counters.update_one({"_id": window_id}, {"$inc": amounts})


def _values(doc: dict) -> Amounts:
    return {k: int(v) for k, v in doc.items()
            if k not in ("_id", "expires_at", "window") and isinstance(v, (int, float))}
