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

Each block is also recorded under its holder: ``holders: {<process>: {requests: n,
tokens: n, u: {requests: n, tokens: n}, exp}}``, what the process took (``requests``,
``tokens``) and what it last reported as used (``u``). The holder renews ``exp`` and
reports ``u`` while it lives; the holding of a process that died is taken back once it has
expired, and what it did not report as used returns to the window.

**Stream slots** (``limit_slots``, one document per account): ``{_id: "slots:<account>",
held: n, holders: {<process>: {n, exp}}}``. A process leases ``k`` slots with
``{held: {$not: {$gt: cap - k}}}`` + ``$inc``; it renews the expiry of its holdings while
it lives, and the holdings of a crashed process are taken back by the next process that
finds the slots full, once they have expired.

**Taking an expired holding back** is two steps ``grace`` seconds apart: the first process
that finds it expired marks it (``sus``), and only a process that finds it still expired
and marked ``grace`` seconds later takes it back. A holder that is alive clears the mark
when it renews, so after a database outage every living holder renews before anyone takes
its holding (the holders keep trying while the database is away, the others only ask
when they need quota or slots).

**Every call is bounded** by the database timeout (``[database] timeout``, the driver's
per-operation ``timeout``): a take or renewal on a connection that stopped answering fails
then (503 under the ``exact`` outage policy) instead of when the driver's monitor finds the
server gone, some 30 s later.

**Short-lived counters** (``take``/``give_back``, one document per window with a TTL):
for rare events such as sign-in attempts, never for API requests.
"""
from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import pymongo
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

Amounts = dict[str, int]


def bounded(method):
    """Run a Counters call within the database timeout (all its round trips together)."""
    @functools.wraps(method)
    async def call(self, *args, **kwargs):
        with pymongo.timeout(self.timeout):
            return await method(self, *args, **kwargs)
    return call


class Counters:
    """limit_counters and limit_slots collections."""

    def __init__(self, db, timeout: float | None = None) -> None:
        self.counters = db["limit_counters"]
        self.slots = db["limit_slots"]
        self.timeout = timeout          # seconds for one call (None: the driver's own)

    async def init(self) -> None:
        await self.counters.create_index("expires_at", expireAfterSeconds=0)
        # Stream slots of the old format (one lease document per stream) are obsolete.
        await self.slots.delete_many({"leases": {"$exists": True}})

    # -- quota windows -----------------------------------------------------------------
    @bounded
    async def lease_quota(self, pool_id: str, window: str, want: Amounts, need: Amounts,
                          limits: Amounts, holder: str = "", hold: float = 0.0,
                          grace: float = 0.0, used: Amounts | None = None,
                          ) -> tuple[Amounts | None, Amounts, str]:
        """Take ``want`` of each field from the shared window, or as much as is left if
        that still covers ``need``; all fields or none. Returns (what was taken or None,
        the shared counters afterwards, the window taken from: a newer one than asked
        when another process already started it). Usually one round trip.

        With ``holder``, the block is recorded under it with an expiry ``hold`` seconds
        ahead and ``used`` as its reported use; expired holdings of dead processes (see
        the module's docstring, ``grace``) are taken back when found."""
        if any(need.get(f, 0) > limits[f] for f in want):
            return None, {}, window
        # Never more than a limit in one take: a missing document is created by it.
        take = {f: min(a, limits[f]) for f, a in want.items() if a > 0}
        h = f"holders.{holder}"
        swept = False
        for _ in range(5):
            if not take:
                return {}, {}, window
            now = datetime.now(UTC)
            query: dict = {"_id": pool_id, "window": window}
            for field, amount in take.items():
                query[field] = {"$not": {"$gt": limits[field] - amount}}
            update: dict = {"$inc": dict(take)}
            if holder:
                update["$inc"].update({f"{h}.{f}": a for f, a in take.items()})
                update["$set"] = {f"{h}.exp": now + timedelta(seconds=hold),
                                  **{f"{h}.u.{f}": v for f, v in (used or {}).items()}}
                update["$unset"] = {f"{h}.sus": ""}
            doc = await self.counters.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER)
            if doc is not None:
                if holder and _expired(doc, now):
                    await self._sweep_quota(doc, now, grace)
                return take, _values(doc), window
            doc = await self.counters.find_one({"_id": pool_id})
            if doc is None:
                entry = {"holders": {holder: {**take, "u": dict(used or {}),
                                              "exp": now + timedelta(seconds=hold)}}} \
                    if holder else {}
                try:
                    await self.counters.insert_one({"_id": pool_id, "window": window, **take,
                                                    **entry})
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
                if not swept and holder and _expired(doc, now):
                    swept = True
                    if await self._sweep_quota(doc, now, grace):
                        continue
                return None, values, window
            take = {f: min(a, left[f]) for f, a in take.items() if min(a, left[f]) > 0}
        return None, {}, window

    async def _sweep_quota(self, doc: dict, now: datetime, grace: float) -> bool:
        """Mark or take back the expired holdings in a window's document: what each did
        not report as used goes back. True when something was taken back."""
        fields = list(_values(doc))

        def back(h: dict) -> Amounts:
            reported = h.get("u") or {}
            return {f: -(int(h.get(f, 0)) - int(reported.get(f, 0))) for f in fields
                    if int(h.get(f, 0)) > int(reported.get(f, 0))}
        return await self._sweep(self.counters, doc, now, grace, back)

    async def _sweep(self, coll, doc: dict, now: datetime, grace: float, back) -> bool:
        taken = False
        for holder, h in list((doc.get("holders") or {}).items()):
            exp = h.get("exp") if isinstance(h, dict) else None
            if exp is None or exp > now:
                continue
            query = {"_id": doc["_id"], f"holders.{holder}.exp": exp}
            if "window" in doc:
                query["window"] = doc["window"]
            sus = h.get("sus")
            if grace > 0 and sus is None:              # first sight: mark it, wait
                await coll.update_one({**query, f"holders.{holder}.sus": {"$exists": False}},
                                      {"$set": {f"holders.{holder}.sus": now}})
                continue
            if grace > 0 and sus + timedelta(seconds=grace) > now:
                continue
            if sus is not None:
                query[f"holders.{holder}.sus"] = sus
            update: dict = {"$unset": {f"holders.{holder}": ""}}
            inc = back(h)
            if inc:
                update["$inc"] = inc
            result = await coll.update_one(query, update)
            taken |= bool(result.modified_count)
        return taken

    @bounded
    async def adjust_quota(self, pool_id: str, window: str, amounts: Amounts,
                           holder: str = "", used: Amounts | None = None,
                           forget: bool = False) -> bool:
        """Add (positive: usage beyond what was leased) or give back (negative: unused
        quota) amounts to a window, if it is still the current one. With ``holder``: to
        its holding too, with ``used`` as its reported use (``forget``: the holding ends,
        all it holds being used), and only if it still has one. False when nothing
        matched (the window has passed, or the holding was taken back)."""
        amounts = {f: a for f, a in amounts.items() if a}
        query: dict = {"_id": pool_id, "window": window}
        inc = dict(amounts)
        update: dict = {}
        if holder:
            h = f"holders.{holder}"
            query[h] = {"$exists": True}
            if forget:
                update["$unset"] = {h: ""}
            else:
                inc.update({f"{h}.{f}": a for f, a in amounts.items()})
                if used:
                    update["$set"] = {f"{h}.u.{f}": v for f, v in used.items()}
        if inc:
            update["$inc"] = inc
        if not update:
            return True
        result = await self.counters.update_one(query, update)
        return bool(result.matched_count)

    @bounded
    async def restore_quota(self, pool_id: str, window: str, holder: str, charge: Amounts,
                            used: Amounts, hold: float) -> bool:
        """Record a holding again after it was taken back while its holder lived (cut off
        from the database): charge what it used beyond what it had reported (even past
        the limit: it was admitted), holding exactly its use. False: the window passed."""
        update: dict = {"$set": {f"holders.{holder}": {
            **{f: v for f, v in used.items()}, "u": dict(used),
            "exp": datetime.now(UTC) + timedelta(seconds=hold)}}}
        charge = {f: c for f, c in charge.items() if c}
        if charge:
            update["$inc"] = charge
        result = await self.counters.update_one({"_id": pool_id, "window": window}, update)
        return bool(result.matched_count)

    @bounded
    async def charge_quota(self, pool_id: str, window: str, holder: str, amounts: Amounts,
                           used: Amounts, hold: float) -> bool:
        """Charge use admitted without a lease while the database could not be reached
        (``[limits] outage_policy = "available"``), even past the limit, and record it
        under ``holder`` (reporting ``used``). A window nobody has started yet is started
        by it. False: the window has passed."""
        amounts = {f: a for f, a in amounts.items() if a}
        h = f"holders.{holder}"
        for _ in range(4):
            exp = datetime.now(UTC) + timedelta(seconds=hold)
            result = await self.counters.update_one(
                {"_id": pool_id, "window": window},
                {"$inc": {**amounts, **{f"{h}.{f}": a for f, a in amounts.items()}},
                 "$set": {f"{h}.exp": exp, **{f"{h}.u.{f}": v for f, v in used.items()}},
                 "$unset": {f"{h}.sus": ""}})
            if result.matched_count:
                return True
            doc = await self.counters.find_one({"_id": pool_id}, {"window": 1})
            if doc is None:
                try:
                    await self.counters.insert_one({"_id": pool_id, "window": window})
                except DuplicateKeyError:
                    pass
                continue
            if doc.get("window", "") < window:        # a new window: reset in place
                await self.counters.replace_one({"_id": pool_id, "window": doc.get("window")},
                                                {"window": window})
                continue
            return False                               # ours has passed
        return False

    @bounded
    async def quota_values(self, pool_id: str, window: str) -> Amounts:
        """The shared counters of a window (zeros once it has passed)."""
        doc = await self.counters.find_one({"_id": pool_id}) or {}
        return _values(doc) if doc.get("window") == window else {}

    # -- stream slots ------------------------------------------------------------------
    @bounded
    async def lease_slots(self, subject: str, holder: str, want: int, need: int, cap: int,
                          ttl: float, grace: float = 0.0, seen: dict | None = None) -> int:
        """Lease up to ``want`` (at least ``need``) of ``cap`` slots for ``holder``, its
        holding expiring ``ttl`` seconds ahead; returns how many were leased (0: none
        free). Expired holdings of crashed processes are taken back (``grace``: see the
        module's docstring) when the slots are full. ``seen`` gets the slots held by all
        processes afterwards (``held``)."""
        seen = {} if seen is None else seen
        want = min(want, cap)       # the upsert below creates a missing document as is
        if need > cap:
            return 0
        for attempt in range(3):
            if want <= 0:
                return 0
            now = datetime.now(UTC)
            try:
                doc = await self.slots.find_one_and_update(
                    {"_id": subject, "held": {"$not": {"$gt": cap - want}}},
                    {"$inc": {"held": want, f"holders.{holder}.n": want},
                     "$set": {f"holders.{holder}.exp": now + timedelta(seconds=ttl)},
                     "$unset": {f"holders.{holder}.sus": ""}},
                    upsert=True, projection={"held": 1}, return_document=ReturnDocument.AFTER)
                if doc is not None:
                    seen["held"] = int(doc.get("held", 0))
                return want
            except DuplicateKeyError:
                pass
            doc = await self.slots.find_one({"_id": subject}) or {}
            if attempt == 0 and await self._sweep(
                    self.slots, doc, now, grace, lambda h: {"held": -int(h.get("n", 0))}):
                doc = await self.slots.find_one({"_id": subject}) or {}
            seen["held"] = int(doc.get("held", 0))
            free = cap - seen["held"]
            if free < need:
                return 0
            want = min(want, free)
        return 0

    @bounded
    async def return_slots(self, subject: str, holder: str, count: int, held: int) -> None:
        """Give back ``count`` of the ``held`` slots this holder has (all: forget it)."""
        if count <= 0:
            return
        update: dict = {"$inc": {"held": -count, f"holders.{holder}.n": -count}}
        if count >= held:
            update = {"$inc": {"held": -count}, "$unset": {f"holders.{holder}": ""}}
        await self.slots.update_one({"_id": subject, f"holders.{holder}.n": held}, update)

    @bounded
    async def restore_slots(self, subject: str, holder: str, count: int, ttl: float) -> None:
        """Record ``count`` slots (streams still running) for a holder whose holding was
        taken back while it lived: even past the cap, so that nobody admits more until the
        account is under its cap again."""
        await self.slots.update_one(
            {"_id": subject},
            {"$inc": {"held": count, f"holders.{holder}.n": count},
             "$set": {f"holders.{holder}.exp": datetime.now(UTC) + timedelta(seconds=ttl)}},
            upsert=True)

    @bounded
    async def renew(self, holder: str, ttl: float, slots: set[str],
                    pools: dict[str, tuple[str, Amounts]]) -> tuple[set[str], set[str]]:
        """Push the expiry of this holder's holdings ``ttl`` seconds ahead (and clear the
        marks of processes that thought it dead): of all its stream slots when ``slots``
        (the subjects it holds slots of) is given, and of the quota windows in ``pools``
        (pool id -> (window, its use to report)). Returns the pool ids and the subjects
        whose holding is gone (taken back meanwhile, or its window passed). Two or three
        round trips, however many holdings."""
        h = f"holders.{holder}"
        exp = datetime.now(UTC) + timedelta(seconds=ttl)
        lost_slots: set[str] = set()
        if slots:
            result = await self.slots.update_many(
                {h: {"$exists": True}}, {"$set": {f"{h}.exp": exp}, "$unset": {f"{h}.sus": ""}})
            if result.matched_count < len(slots):
                found = {d["_id"] async for d in self.slots.find({h: {"$exists": True}},
                                                                {"_id": 1})}
                lost_slots = slots - found
        lost_pools: set[str] = set()
        if pools:
            result = await self.counters.bulk_write([UpdateOne(
                {"_id": pool_id, "window": window, h: {"$exists": True}},
                {"$set": {f"{h}.exp": exp, **{f"{h}.u.{f}": v for f, v in used.items()}},
                 "$unset": {f"{h}.sus": ""}}) for pool_id, (window, used) in pools.items()],
                ordered=False)
            if result.matched_count < len(pools):
                found = {d["_id"]: d.get("window") async for d in self.counters.find(
                    {"_id": {"$in": list(pools)}, h: {"$exists": True}}, {"window": 1})}
                lost_pools = {p for p, (w, _) in pools.items() if found.get(p) != w}
        return lost_pools, lost_slots

    @bounded
    async def live_leases(self, subject: str) -> int:
        """Slots held by live (unexpired) holders."""
        doc = await self.slots.find_one({"_id": subject}) or {}
        now = datetime.now(UTC)
        return sum(int(h.get("n", 0)) for h in (doc.get("holders") or {}).values()
                   if h.get("exp") and h["exp"] > now)

    # -- short-lived counters (sign-in throttles) ---------------------------------------
    @bounded
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

    @bounded
    async def give_back(self, window_id: str, amounts: dict[str, int]) -> None:
        """Take back what ``take`` added (each refund at most what was taken)."""
        amounts = {f: -a for f, a in amounts.items() if a > 0}
        if amounts:
            await self.counters.update_one({"_id": window_id}, {"$inc": amounts})


def _expired(doc: dict, now: datetime) -> bool:
    """Whether a document has a holding that has expired (a process that may be dead)."""
    return any(isinstance(h, dict) and h.get("exp") is not None and h["exp"] <= now
               for h in (doc.get("holders") or {}).values())


def _values(doc: dict) -> Amounts:
    return {k: int(v) for k, v in doc.items()
            if k not in ("_id", "expires_at", "window") and isinstance(v, (int, float))}
