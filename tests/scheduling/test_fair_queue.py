"""The order of service of the fair queue, on a driven clock (no real time passes)."""
from __future__ import annotations

import asyncio

import pytest

from gateway.relay.fair_queue import FairQueue, QueueFull


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_free_slots_are_granted_at_once_and_waiters_go_to_the_first_freed_replica():
    async def go():
        q = FairQueue([1, 2], Clock())
        a, b, c = q.enter("a"), q.enter("b"), q.enter("c")
        assert a.granted and b.granted and c.granted
        assert sorted([a.replica, b.replica, c.replica]) == [0, 1, 1]
        d = q.enter("d")
        assert not d.granted and q.waiting == 1
        alone = next(t for t in (a, b, c) if t.replica == 0)
        q.release(alone)                  # replica 0 frees first: d goes there
        assert await d.wait() == 0
        assert q.slots_busy == 3
    run(go())


def test_the_account_served_least_goes_next_and_its_own_requests_in_order():
    async def go():
        q = FairQueue([1], Clock())
        holder = q.enter("x")
        heavy = [q.enter("heavy") for _ in range(3)]
        q.charge("heavy", 1.0, 100)            # heavy was served 100 tokens
        light = q.enter("light")               # lifted to heavy's counter (100), not 0
        assert q.counters["light"] == 100
        order = []
        current = holder
        for _ in range(4):
            q.release(current)
            current = next(t for t in heavy + [light] if t.granted)
            order.append("light" if current is light else f"heavy{heavy.index(current)}")
            q.charge(current.account, 1.0, 50)
        # at the tie (100 each) light goes first: it has fewer requests waiting; then
        # heavy's, in their order
        assert order == ["light", "heavy0", "heavy1", "heavy2"]
    run(go())


def test_a_weight_two_tier_gets_twice_the_tokens_under_backlog():
    async def go():
        q = FairQueue([1], Clock())
        tokens = {"gold": 0, "basic": 0}
        weights = {"gold": 2.0, "basic": 1.0}
        holder = q.enter("warmup")
        waiting = {name: [q.enter(name, weights[name]) for _ in range(2)] for name in tokens}
        current = holder
        for _ in range(300):
            q.release(current)
            current = next(t for ts in waiting.values() for t in ts if t.granted)
            name = current.account
            waiting[name].remove(current)
            waiting[name].append(q.enter(name, weights[name]))   # always backlogged
            tokens[name] += 10
            q.charge(name, weights[name], 10)
        assert tokens["gold"] / tokens["basic"] == pytest.approx(2.0, rel=0.05)
    run(go())


def test_a_higher_priority_band_always_goes_first():
    async def go():
        q = FairQueue([1], Clock())
        holder = q.enter("x")
        low = q.enter("low", priority=0)
        q.charge("high", 1.0, 10_000)           # far more served, but a higher band
        high = q.enter("high", priority=1)
        q.release(holder)
        assert high.granted and not low.granted
    run(go())


def test_a_client_that_leaves_gives_its_place_back_and_nothing_idles():
    async def go():
        clock = Clock()
        q = FairQueue([1], clock)
        holder = q.enter("a")
        gone, stays = q.enter("b"), q.enter("c")
        waiter = asyncio.ensure_future(gone.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert q.waiting == 1 and stays.position() == 0
        clock.now = 2.5
        q.release(holder)
        assert stays.granted and stays.waited == 2.5     # work-conserving: next in line
        assert not gone.granted
    run(go())


def test_the_per_account_cap_on_waiting_requests():
    async def go():
        q = FairQueue([1], Clock(), max_waiting_per_account=2)
        q.enter("a")
        q.enter("a"), q.enter("a")
        with pytest.raises(QueueFull):
            q.enter("a")
        q.enter("b")                       # other accounts still wait
        assert q.waiting == 3
    run(go())


def test_positions_follow_the_order_of_service():
    async def go():
        q = FairQueue([1], Clock())
        q.enter("x")
        a1, a2 = q.enter("a"), q.enter("a")
        q.charge("a", 1.0, 10)
        b1 = q.enter("b")       # lifted to a's counter; fewer waiting: b goes first
        assert (b1.position(), a1.position(), a2.position()) == (0, 1, 2)
    run(go())


def test_demand_counts_each_accounts_requests_and_keeps_one_for_a_user_between_two():
    """What a process reports to share slots with others: per account, its requests
    running or waiting, with its weight and band; an account whose last request ended
    less than ``linger`` ago still counts one, then none; a new backlog is announced."""
    async def go():
        clock = Clock()
        q = FairQueue([2], clock)
        q.linger = 1.0
        announced = []
        q.on_backlog = lambda: announced.append(clock.now)
        light = q.enter("light")                 # a slot at once
        heavy = [q.enter("heavy", 2.0, 1) for _ in range(3)]   # one slot, two wait
        assert q.demand() == {"heavy": (3, 2.0, 1), "light": (1, 1.0, 0)}
        assert announced == [0.0]                # heavy's second request began a backlog
        clock.now = 5.0
        q.release(light)                         # heavy's next request takes the slot
        assert heavy[1].granted
        assert q.demand() == {"heavy": (3, 2.0, 1), "light": (1, 1.0, 0)}  # lingering
        clock.now = 5.9
        assert q.demand()["light"] == (1, 1.0, 0)
        clock.now = 6.1
        assert q.demand() == {"heavy": (3, 2.0, 1)}
        for t in heavy:
            await t.wait()
            q.release(t)
        clock.now = 8.0
        assert q.demand() == {} and not q.running and not q.tiers
    run(go())
