"""Which of a model's slots this gateway process may fill, when several share them.

Every process reports its demand for a model (requests holding or waiting for a slot)
to one document per model (gateway.store.capacity) every ``INTERVAL`` seconds, in the
background, and takes its share of the slots from everyone's reports: no database
round trip per request. :func:`split` is the rule, the same in every process:

- while demand exceeds capacity, slots go in proportion to demand (whole slots, the
  remainders by largest fraction, ties by holder id), each holder with demand getting
  at least one while there are slots;
- slots nobody demands are spread over all holders (so an idle process can start a
  request at once while capacity is free).

A process alone (or whose database does not answer) keeps the whole capacity, or the
last shares it computed. A holder that stops reporting drops out after ``TTL``. Shares
lag demand by at most one interval: a process whose share shrank starts nothing new
until its running requests are under the new share.
"""
from __future__ import annotations

import math

INTERVAL = 0.25      # seconds between reports
TTL = 1.5            # a holder that has not reported for this long is gone


def shares(capacity: int, demands: dict[str, int]) -> dict[str, int]:
    """Each holder's share of ``capacity`` slots (see the module); sums to capacity."""
    holders = sorted(demands)
    if not holders:
        return {}
    total = sum(max(0, d) for d in demands.values())
    out = {h: 0 for h in holders}
    if total >= capacity:
        wanting = [h for h in holders if demands[h] > 0]
        exact = {h: capacity * demands[h] / total for h in wanting}
        for h in wanting:
            out[h] = math.floor(exact[h])
        left = capacity - sum(out.values())
        starved = [h for h in wanting if out[h] == 0]
        for h in starved[:left]:
            out[h] = 1
        left = capacity - sum(out.values())
        by_fraction = sorted(wanting, key=lambda h: (-(exact[h] - math.floor(exact[h])), h))
        for h in by_fraction:
            if left <= 0:
                break
            if h not in starved:
                out[h] += 1
                left -= 1
        while left > 0:                     # (only if every holder was starved)
            for h in wanting:
                if left <= 0:
                    break
                out[h] += 1
                left -= 1
        return out
    for h in holders:
        out[h] = max(0, demands[h])
    spare = capacity - total
    for i, h in enumerate(holders):
        out[h] += spare // len(holders) + (1 if i < spare % len(holders) else 0)
    return out


def replica_slots(capacities: list[int], demands: dict[str, int], me: str) -> list[int]:
    """My slots on each replica: the holders' shares of the total capacity, laid over
    the replicas' slots in one order every process computes alike."""
    total = sum(capacities)
    mine = shares(total, demands)
    if me not in mine:
        return list(capacities)
    # the slots in order: replica 0's first slot, replica 1's first slot, ...
    order = [r for k in range(max(capacities, default=0)) for r, c in enumerate(capacities)
             if k < c]
    start = sum(mine[h] for h in sorted(mine) if h < me)
    out = [0] * len(capacities)
    for r in order[start:start + mine[me]]:
        out[r] += 1
    return out
