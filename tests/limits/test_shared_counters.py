"""The shared counters behind quota leases, against the real MongoDB-wire server: a take
never passes a limit, also when it creates the window's document or its window has
passed, and slot leases never pass the cap."""
import uuid

from tests.helpers import db_run


def _db(mongo):
    return mongo.uri, "counters_" + uuid.uuid4().hex[:8]


def test_takes_never_pass_the_limit_whatever_the_window(mongo):
    async def go(store):
        c = store.counters
        taken, shared, _ = await c.lease_quota("q:m:a", "202611272100", {"requests": 25},
                                               {"requests": 1}, {"requests": 5})
        assert taken == {"requests": 5} and shared["requests"] == 5
        again, _, _ = await c.lease_quota("q:m:a", "202611272100", {"requests": 3},
                                          {"requests": 1}, {"requests": 5})
        assert again is None                                  # full: refused
        fresh, shared, _ = await c.lease_quota("q:m:a", "202611272101", {"requests": 3},
                                               {"requests": 1}, {"requests": 5})
        assert fresh == {"requests": 3} and shared == {"requests": 3}   # reset in place
        late, _, window = await c.lease_quota("q:m:a", "202611272100", {"requests": 1},
                                              {"requests": 1}, {"requests": 5})
        assert late == {"requests": 1} and window == "202611272101"   # a clock behind joins
        short, _, _ = await c.lease_quota("q:m:a", "202611272101", {"requests": 9},
                                          {"requests": 2}, {"requests": 5})
        assert short is None                                  # 1 left does not cover 2
        part, _, _ = await c.lease_quota("q:m:a", "202611272101", {"requests": 9},
                                         {"requests": 1}, {"requests": 5})
        assert part == {"requests": 1}                        # what is left, if it covers need
        assert await store.counters.counters.count_documents({}) == 1
    db_run(*_db(mongo), go)


def test_slot_leases_never_pass_the_cap_and_expired_holders_are_reclaimed(mongo):
    async def go(store):
        c = store.counters
        assert await c.lease_slots("slots:a", "p1", 20, 1, 2, 30.0) == 2
        assert await c.lease_slots("slots:a", "p2", 1, 1, 2, 30.0) == 0
        assert await c.live_leases("slots:a") == 2
        await c.return_slots("slots:a", "p1", 1, 2)
        assert await c.lease_slots("slots:a", "p2", 5, 1, 2, 0.0) == 1   # expires at once
        assert await c.lease_slots("slots:a", "p3", 1, 1, 2, 30.0) == 1  # p2's reclaimed
        assert await c.live_leases("slots:a") == 2
    db_run(*_db(mongo), go)


def test_a_request_stamped_just_before_the_minute_joins_the_new_window(mongo):
    """At a window boundary a request computed its window a moment before another one
    rolled the lease forward: it is admitted in the current window, not refused."""
    import logging

    from plugins.limits.quota import LeaseSettings, QuotaLeases

    async def go(store):
        leases = QuotaLeases(store.counters, LeaseSettings(), "proc_test",
                             logging.getLogger("test"))
        pool = leases.pool("q:m:acct", {"requests": 10})
        assert await leases.acquire(pool, {"requests": 1}, "202611272101") == "202611272101"
        assert await leases.acquire(pool, {"requests": 1}, "202611272100") == "202611272101"
        leases.settle(pool, "202611272101", {"requests": 1}, {"requests": 1})
        await leases.close()
        return await store.counters.quota_values("q:m:acct", "202611272101")
    assert db_run(*_db(mongo), go) == {"requests": 2}



def test_a_take_that_outlives_its_window_does_not_refuse_the_new_one(mongo):
    """A block taken (e.g. in the background) just before the minute ends comes back
    after the lease rolled to the new minute: requests waiting on it try again in the new
    window instead of being refused."""
    import asyncio
    import logging

    from plugins.limits.quota import LeaseSettings, QuotaLeases

    async def go(store):
        leases = QuotaLeases(store.counters, LeaseSettings(), "proc_roll",
                             logging.getLogger("test"))
        pool = leases.pool("q:m:roll", {"requests": 10})
        pool.roll("202611272100")
        stale = asyncio.ensure_future(leases._fetch(pool))      # a take for 21:00...
        pool.fetch = stale
        waiting = asyncio.ensure_future(leases.acquire(pool, {"requests": 1},
                                                       "202611272101"))   # ...21:01 waits
        assert await waiting == "202611272101"
        await leases.close()
    db_run(*_db(mongo), go)
