"""Which of a model's slots this gateway process may fill, when several share them.

Every process reports its demand for a model to one document per model
(gateway.store.capacity) every ``INTERVAL`` seconds, in the background: no database
round trip per request. The demand is per account: requests holding or waiting for a
slot, with the account's tier weight and priority band. Every process then computes
the same split (:func:`shares`), gives slots back down to its target (or to what it
still runs), and takes more only with a conditional update that keeps the total within
the capacity, so the processes together never hold more slots than the model has.

The split is token-fair across processes, as the fair queue is within one:

- while demand exceeds capacity, the slots are water-filled over the *accounts*
  (:func:`fair_allocation`): each account gets its weight's part of the slots, or its
  demand if that is less, strict priority bands first; an account's part is split
  over the processes that hold its requests, by its demand there. A light user's
  process thus holds the slot that user is due, whatever the heavy users queue
  elsewhere; whole slots by largest remainder (ties by holder id), each holder with
  demand getting at least one while there are slots;
- slots nobody demands are spread over all holders (so an idle process can start a
  request at once while capacity is free).

A process alone takes the whole capacity at its first report (before it listens). One
whose database does not answer keeps the slots it holds (the whole capacity if it never
reached the database: availability first). A holder that stops reporting is reclaimed
after ``TTL``. Shares follow demand within an interval or two; a process whose demand
grows (an account starts waiting) reports at once rather than at the next interval.
"""
from __future__ import annotations

import math

INTERVAL = 0.1       # seconds between reports
TTL = 1.0            # a holder that has not reported for this long is gone
KICK_SPACING = 0.02  # at least this long between two early reports (see the module)
LINGER = 1.0         # an account between requests keeps demand 1 this long
MAX_ACCOUNTS = 256   # accounts reported per holder; the rest as one (bounded document)

# One holder's demand: account -> (requests running or waiting, tier weight, priority)
Demand = dict[str, tuple[int, float, int]]


def fair_allocation(capacity: float, accounts: Demand) -> dict[str, float]:
    """Water-filling: each account's part of ``capacity`` slots. Higher priority bands
    first; within a band each account gets ``level x weight`` or its demand if less,
    with the level set so the parts sum to what the band can have."""
    out: dict[str, float] = {}
    left = float(capacity)
    for band in sorted({p for _, _, p in accounts.values()}, reverse=True):
        members = sorted((a for a, (d, _, p) in accounts.items() if p == band and d > 0),
                         key=lambda a: (accounts[a][0] / accounts[a][1], a))
        weights = sum(accounts[a][1] for a in members)
        for i, account in enumerate(members):
            demand, weight, _ = accounts[account]
            part = left * weight / weights if weights > 0 else 0.0
            if demand <= part:
                out[account], left, weights = float(demand), left - demand, weights - weight
                continue
            for other in members[i:]:               # the rest are all above the level
                out[other] = left * accounts[other][1] / weights
            left = 0.0
            break
    return out


def shares(capacity: int, demands: dict[str, Demand]) -> dict[str, int]:
    """Each holder's share of ``capacity`` slots (see the module); sums to capacity."""
    holders = sorted(demands)
    if not holders:
        return {}
    per_holder = {h: sum(max(0, d) for d, _, _ in demands[h].values()) for h in holders}
    total = sum(per_holder.values())
    if total < capacity:
        spare = capacity - total
        return {h: per_holder[h] + spare // len(holders) + (1 if i < spare % len(holders)
                                                             else 0)
                for i, h in enumerate(holders)}
    accounts: Demand = {}
    for h in holders:
        for account, (d, weight, priority) in demands[h].items():
            prev = accounts.get(account, (0, weight, priority))
            accounts[account] = (prev[0] + max(0, d), prev[1] if prev[1] > 0 else 1.0,
                                 max(prev[2], priority))
    parts = fair_allocation(capacity, accounts)
    exact = {h: sum(parts.get(a, 0.0) * max(0, d) / accounts[a][0]
                    for a, (d, _, _) in demands[h].items() if accounts[a][0] > 0)
             for h in holders}
    wanting = [h for h in holders if per_holder[h] > 0]
    return _whole(capacity, exact, wanting, holders)


def _whole(capacity: int, exact: dict[str, float], wanting: list[str],
           holders: list[str]) -> dict[str, int]:
    """Whole slots from exact parts: floors, a slot for every holder with demand while
    there are slots, the rest by largest remainder (ties by holder id)."""
    out = {h: min(capacity, math.floor(exact[h] + 1e-9)) for h in holders}
    while sum(out.values()) > capacity:       # (rounding noise only)
        out[max(out, key=lambda h: (out[h], h))] -= 1
    left = capacity - sum(out.values())
    starved = [h for h in wanting if out[h] == 0]
    for h in starved[:left]:
        out[h] = 1
    left = capacity - sum(out.values())
    by_fraction = sorted(wanting, key=lambda h: (-(exact[h] - math.floor(exact[h] + 1e-9)),
                                                 h))
    for h in by_fraction:
        if left <= 0:
            break
        if h not in starved:
            out[h] += 1
            left -= 1
    while left > 0:                     # (only if every holder was starved)
        for h in wanting or holders:
            if left <= 0:
                break
            out[h] += 1
            left -= 1
    return out


def bounded(accounts: Demand, holder: str) -> Demand:
    """At most ``MAX_ACCOUNTS`` accounts (the largest demands); the rest reported as one
    account of this holder, so the document stays bounded."""
    if len(accounts) <= MAX_ACCOUNTS:
        return accounts
    ranked = sorted(accounts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    kept = dict(ranked[:MAX_ACCOUNTS - 1])
    rest = ranked[MAX_ACCOUNTS - 1:]
    kept[f"~rest@{holder}"] = (sum(d for _, (d, _, _) in rest),
                               sum(w for _, (_, w, _) in rest), max(p for _, (_, _, p) in rest))
    return kept


def lay(capacities: list[int], start: int, count: int) -> list[int]:
    """``count`` slots from position ``start`` of the replicas' slots in one order that
    every process computes alike (replica 0's first slot, replica 1's first, ...)."""
    order = [r for k in range(max(capacities, default=0)) for r, c in enumerate(capacities)
             if k < c]
    out = [0] * len(capacities)
    for r in order[start:start + count]:
        out[r] += 1
    return out
