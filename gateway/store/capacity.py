"""Model capacity shared between gateway processes: one document per model.

``{_id: model, holders: {<process id>: {"demand": n, "expires": t}}}``: each process
writes its demand (requests holding or waiting for a slot) with an expiry, and reads
everyone's, to take its share of the model's slots (gateway.relay.capacity_shares).
One document per model, rewritten in place: the collection never grows with requests,
and a dead process's entry is dropped once it expired.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument


class CapacityShares:
    """The ``capacity_shares`` collection."""

    def __init__(self, db) -> None:
        self.col = db["capacity_shares"]

    async def init(self) -> None:
        pass                      # addressed by _id only

    async def report(self, model: str, holder: str, demand: int,
                     ttl: float) -> dict[str, int]:
        """Write this holder's demand, drop expired holders; every live holder's demand
        (this one's included). One round trip (plus one for the expired, rarely)."""
        now = datetime.now(UTC)
        doc = await self.col.find_one_and_update(
            {"_id": model},
            {"$set": {f"holders.{holder}": {"demand": int(demand),
                                             "expires": now + timedelta(seconds=ttl)}}},
            upsert=True, return_document=ReturnDocument.AFTER)
        holders = doc.get("holders") or {}
        expired = [h for h, v in holders.items() if _expired(v, now)]
        if expired:
            await self.col.update_one({"_id": model},
                                      {"$unset": {f"holders.{h}": "" for h in expired}})
        return {h: int(v.get("demand", 0)) for h, v in holders.items() if h not in expired}

    async def leave(self, model: str, holder: str) -> None:
        """This holder stops (its share goes to the others at their next report)."""
        await self.col.update_one({"_id": model}, {"$unset": {f"holders.{holder}": ""}})


def _expired(entry: dict, now: datetime) -> bool:
    expires = entry.get("expires")
    if expires is None:
        return True
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= now
