"""What the tier limiter costs one request in steady state, in microseconds.

The time-to-first-token difference between a metered and an unlimited tier is far below
what the end-to-end benchmark can resolve under concurrency (at 50 streams its p50 moves
by several milliseconds from run to run), so this measures the limiter itself: admit and
settle of the real ``TierLimiter`` against the embedded database (in-memory engine), for
a tier without limits and for the soak's metered tier (requests and tokens per minute,
tokens per day and concurrent streams set), with ``--concurrency`` requests in flight.
The database is touched only when a lease runs low, as in the gateway.

    python -m bench.limiter_cost [--requests 200000] [--concurrency 50]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soak import METERED
from gateway.store import embedded_db
from gateway.config import from_dict
from gateway.store import Store
from gateway.types import GenerationRequest, Principal, Usage
from plugins.limits.tiers import TierLimiter

BODY = {"model": "fake", "messages": [{"role": "user", "content": "soak benchmark prompt"}]}


async def cycles(limiter, principal, n: int, concurrency: int) -> float:
    """Seconds per admit+settle, ``concurrency`` admitted at a time (settled FIFO)."""
    req = GenerationRequest("chat", "fake", BODY)
    usage = Usage(prompt_tokens=8, completion_tokens=32)
    in_flight = []
    start = time.perf_counter()
    for _ in range(n):
        adm = await limiter.admit(principal, req)
        assert adm.allowed, adm.message
        in_flight.append(adm)
        if len(in_flight) >= concurrency:
            await limiter.settle(in_flight.pop(0), usage, "ok")
    for adm in in_flight:
        await limiter.settle(adm, usage, "ok")
    return (time.perf_counter() - start) / n


async def measure(uri: str, ns) -> None:
    config = from_dict({"database": {"uri": uri, "name": "limiter_cost"},
                        "tiers": {"open": {}, "metered": METERED},
                        "limits": {"default_tier": "open"}})
    store = Store(uri, "limiter_cost")
    await store.init()
    limiter = TierLimiter(config, store)
    try:
        who = {t: Principal(account_id=f"acct-{t}", tier=t, key_id=f"key-{t}")
               for t in ("open", "metered")}
        for p in who.values():                       # warm up: leases taken, rates known
            await cycles(limiter, p, ns.requests // 10, ns.concurrency)
        runs = {t: [] for t in who}
        for _ in range(5):                           # alternate, take medians
            for t, p in who.items():
                runs[t].append(await cycles(limiter, p, ns.requests // 5, ns.concurrency))
        us = {t: statistics.median(v) * 1e6 for t, v in runs.items()}
        print(f"admit + settle, {ns.concurrency} in flight, median of 5 runs of "
              f"{ns.requests // 5:,}:")
        print(f"  unlimited tier   {us['open']:7.1f} us per request")
        print(f"  metered tier     {us['metered']:7.1f} us per request")
        print(f"  the limits cost  {us['metered'] - us['open']:7.1f} us per request")
    finally:
        await limiter.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=50)
    ns = parser.parse_args()
    db = embedded_db.start("memory")
    try:
        asyncio.run(measure(db.uri, ns))
    finally:
        db.stop()


if __name__ == "__main__":
    main()
