"""Model capacity shared between gateway processes: one document per model.

``{_id: model, total: n, holders: {<process>: {"slots", "demand", "accounts",
"expires"}}}``, where ``accounts`` is ``[[account, requests, weight, priority], ...]``
(bounded by gateway.relay.capacity_shares.MAX_ACCOUNTS) and ``demand`` their sum. A
process holds ``slots`` of the model's capacity; ``total`` is their sum, and slots are
only ever taken with one conditional update that keeps ``total`` within the capacity
(as quota leases are), so no number of processes can hold more slots than the model
has. A holder that stopped reporting is reclaimed once expired (again conditionally).
One document per model, rewritten in place: the collection never grows with requests.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument


class CapacityShares:
    """The ``capacity_shares`` collection (see the module)."""

    def __init__(self, db) -> None:
        self.col = db["capacity_shares"]

    async def init(self) -> None:
        pass                      # addressed by _id only

    async def report(self, model: str, holder: str,
                     accounts: dict[str, tuple[int, float, int]], ttl: float,
                     live: dict | None = None) -> dict:
        """Write this holder's demand per account and expiry, and ``live`` (what it runs
        and queues now, for the operator: ``{"busy", "waiting", "tiers": [[tier, n]]}``);
        reclaim expired holders' slots. Returns ``{"total": n, "holders": {h: {"slots",
        "demand", "accounts"}}}`` (live holders; ``accounts`` as given)."""
        now = datetime.now(UTC)
        rows = [[a, int(n), float(w), int(p)] for a, (n, w, p) in accounts.items()]
        doc = await self.col.find_one_and_update(
            {"_id": model},
            {"$set": {f"holders.{holder}.demand": sum(r[1] for r in rows),
                      f"holders.{holder}.accounts": rows,
                      f"holders.{holder}.live": live or {},
                      f"holders.{holder}.expires": now + timedelta(seconds=ttl)},
             "$setOnInsert": {"total": 0}},
            upsert=True, return_document=ReturnDocument.AFTER)
        holders = doc.get("holders") or {}
        for other, entry in list(holders.items()):
            if other != holder and _expired(entry, now):
                res = await self.col.update_one(
                    {"_id": model, f"holders.{other}.expires": entry.get("expires")},
                    {"$inc": {"total": -int(entry.get("slots", 0))},
                     "$unset": {f"holders.{other}": ""}})
                if res.modified_count:
                    doc["total"] = doc.get("total", 0) - int(entry.get("slots", 0))
                del holders[other]
        return {"total": int(doc.get("total", 0)),
                "holders": {h: {"slots": int(v.get("slots", 0)),
                                "demand": int(v.get("demand", 0)),
                                "accounts": _accounts(v)}
                            for h, v in holders.items()}}

    async def live(self, model: str) -> list[dict]:
        """What each holder not yet expired runs and queues now (``live`` of its last
        report, with its ``slots``): the operator's view across processes."""
        doc = await self.col.find_one({"_id": model}) or {}
        now = datetime.now(UTC)
        return [{**(entry.get("live") or {}), "slots": int(entry.get("slots", 0))}
                for entry in (doc.get("holders") or {}).values() if not _expired(entry, now)]

    async def take(self, model: str, holder: str, want: int, capacity: int) -> bool:
        """Take ``want`` more slots if the total stays within ``capacity`` (atomic)."""
        res = await self.col.update_one(
            {"_id": model, "total": {"$lte": capacity - want}},
            {"$inc": {"total": want, f"holders.{holder}.slots": want}})
        return res.modified_count == 1

    async def give_back(self, model: str, holder: str, count: int) -> None:
        """Return ``count`` slots."""
        await self.col.update_one({"_id": model},
                                  {"$inc": {"total": -count, f"holders.{holder}.slots": -count}})

    async def leave(self, model: str, holder: str, slots: int) -> None:
        """This holder stops: its slots go back at once."""
        await self.col.update_one({"_id": model, f"holders.{holder}": {"$exists": True}},
                                  {"$inc": {"total": -slots},
                                   "$unset": {f"holders.{holder}": ""}})


def _accounts(entry: dict) -> dict[str, tuple[int, float, int]]:
    """A holder's demand per account, as reported (none before its first report)."""
    rows = entry.get("accounts")
    if isinstance(rows, list):
        return {str(r[0]): (int(r[1]), float(r[2]) or 1.0, int(r[3])) for r in rows
                if isinstance(r, list) and len(r) == 4}
    return {}


def _expired(entry: dict, now: datetime) -> bool:
    expires = entry.get("expires")
    if expires is None:
        return False              # mid-creation by its holder
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= now
