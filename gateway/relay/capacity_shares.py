"""Which of a model's slots this gateway process may fill, when several share them.

Every process reports its demand for a model (requests holding or waiting for a slot)
to one document per model (gateway.store.capacity) every ``INTERVAL`` seconds, in the
background: no database round trip per request. Its target is its share by everyone's
demand (:func:`shares`, the same rule in every process); it gives slots back down to
its target (or to what it still runs), and takes more only with a conditional update
that keeps the total within the capacity, so the processes together never hold more
slots than the model has. The rule:

- while demand exceeds capacity, slots go in proportion to demand (whole slots, the
  remainders by largest fraction, ties by holder id), each holder with demand getting
  at least one while there are slots;
- slots nobody demands are spread over all holders (so an idle process can start a
  request at once while capacity is free).

A process alone takes the whole capacity at its first report (before it listens). One
whose database does not answer keeps the slots it holds (the whole capacity if it never
reached the database: availability first). A holder that stops reporting is reclaimed
after ``TTL``. Shares follow demand within an interval or two.
"""
from __future__ import annotations

import math

INTERVAL = 0.1       # seconds between reports
TTL = 1.0            # a holder that has not reported for this long is gone


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


def lay(capacities: list[int], start: int, count: int) -> list[int]:
    """``count`` slots from position ``start`` of the replicas' slots in one order that
    every process computes alike (replica 0's first slot, replica 1's first, ...)."""
    order = [r for k in range(max(capacities, default=0)) for r, c in enumerate(capacities)
             if k < c]
    out = [0] * len(capacities)
    for r in order[start:start + count]:
        out[r] += 1
    return out
