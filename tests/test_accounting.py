"""Accounting at line rate: usage rollups and quota leases keep the database off the
request path, collections bounded, and every request counted exactly once -- also
across a database outage, a slow database, a shutdown and a SIGKILL."""
from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx

from gateway.store import embedded_db
from tests.db_proxy import DelayProxy
from tests.helpers import db_commands, db_run, free_port, start_gateway, wait_until

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}]}
METERED = {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9,
           "tokens_per_day": 10**11, "concurrent_streams": 1000}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "count me once"}]}


def metered(**extra):
    cfg = {**ECHO, "tiers": {"metered": METERED}, "limits": {"default_tier": "metered"}}
    cfg.update(extra)
    return cfg


async def _load(url, keys, n, concurrency, body_for):
    """n requests, ``concurrency`` at a time, keys round-robin; returns the statuses."""
    statuses = []
    queue = iter(range(n))
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        async def worker():
            for i in queue:
                r = await c.post("/v1/chat/completions", json=body_for(i),
                                 headers={"Authorization": f"Bearer {keys[i % len(keys)]}"})
                statuses.append(r.status_code)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _collections(gw):
    async def counts(store):
        names = await store.collection_names()
        return {n: await store.db[n].count_documents({}) for n in names}
    return db_run(gw.db_uri, gw.db_name, counts)


def _daily(uri, db_name, field="requests"):
    return sum(d.get(field, 0) for d in db_run(uri, db_name,
                                               lambda s: s.usage.daily.find({}).to_list()))


def test_thousands_of_requests_keep_collections_bounded_and_the_database_idle(start_gw):
    gw = start_gw(metered(usage={"flush_interval": 1.0}))
    keys = [gw.create_key(f"volume{i}@example.com") for i in range(3)]
    n, failing = 3000, 100

    def body(i):
        text = "FAIL" if i % 30 == 0 else f"request number {i}"
        return {**BODY, "messages": [{"role": "user", "content": text}], "stream": i % 2 == 0}

    asyncio.run(_load(gw.url, keys, 30, 10, body))          # warm up: keys cached, leases
    time.sleep(1.5)
    before = db_commands(gw.url)
    start = time.monotonic()
    statuses = asyncio.run(_load(gw.url, keys, n, 20, body))
    elapsed = time.monotonic() - start
    time.sleep(1.5)                                          # one more usage flush
    after = db_commands(gw.url)
    spent = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    per_request = sum(spent.values()) / n
    print(f"{n} requests in {elapsed:.1f}s; {per_request:.4f} database commands per request"
          f" ({spent})")
    assert statuses.count(200) == n - failing                # FAIL in a streamed body: 200
    # Per request it was ~7 round trips; now a few per second whatever the traffic
    # (usage flushes, quota blocks, key refreshes). `make bench` measures the 0.05 target.
    assert per_request <= 0.1
    assert sum(spent.values()) / (elapsed + 1.5) < 20

    total = n + 30
    wait_until(lambda: _daily(gw.db_uri, gw.db_name) == total, 20, what="rollups")
    assert _daily(gw.db_uri, gw.db_name, "errors") == failing + 1
    counts = _collections(gw)
    hours = 2                                                # the run may cross an hour
    assert "usage_events" not in counts
    assert counts["usage_daily"] <= len(keys) * 2
    assert counts["usage_hourly"] <= len(keys) * hours
    assert counts["limit_counters"] <= len(keys) * 2          # this minute, today: reused
    assert counts["limit_slots"] <= len(keys)
    hourly = db_run(gw.db_uri, gw.db_name, lambda s: s.usage.hourly.find({}).to_list())
    assert sum(d["requests"] for d in hourly) == total
    assert sum(d["ttft_count"] for d in hourly) == total - failing - 1
    assert sum(sum(d["duration_hist"].values()) for d in hourly) == total


def test_requests_inside_leased_quota_do_not_wait_for_a_slow_database(tmp_path):
    db = embedded_db.start("memory")
    proxy = DelayProxy(db.port)
    gw = start_gateway(tmp_path, proxy.uri, metered(limits={
        "default_tier": "metered", "lease_horizon": 30.0}))
    try:
        key = gw.create_key("slowdb@example.com")
        headers = {"Authorization": f"Bearer {key}"}

        def ttfts(n):
            out = []
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                for _ in range(n):
                    start = time.perf_counter()
                    with c.stream("POST", "/v1/chat/completions", headers=headers,
                                  json={**BODY, "stream": True}) as r:
                        assert r.status_code == 200
                        first = None
                        for line in r.iter_lines():
                            if first is None and line.startswith("data: {"):
                                first = time.perf_counter() - start
                        out.append(first)
            return out

        second = datetime.now(UTC).second
        if second > 40:                    # a new minute needs a new lease: not here
            time.sleep(61 - second)
        ttfts(60)                          # the lease grows with demand
        fast = statistics.median(ttfts(40))
        proxy.delay = 0.2                  # +200 ms per packet, each way
        slow = ttfts(40)
        print(f"TTFT p50 {fast * 1000:.2f} ms -> {statistics.median(slow) * 1000:.2f} ms "
              f"with +200 ms per database packet; max {max(slow) * 1000:.1f} ms")
        assert statistics.median(slow) - fast < 0.05
        assert max(slow) < 0.4             # not one request waited for a round trip
    finally:
        proxy.delay = 0.0
        gw.stop()
        proxy.close()
        db.stop()


def test_a_burst_far_below_the_limits_is_admitted_whole_with_a_slow_database(tmp_path):
    """Requests waiting for a new block (or slots) are served first come, first served:
    latecomers arriving while a take is on its way to a slow database do not take what
    it brought for the waiting ones, so no request is refused far below every limit."""
    db = embedded_db.start("memory")
    proxy = DelayProxy(db.port)
    gw = start_gateway(tmp_path, proxy.uri, metered(**{**ECHO, "models": [
        {"name": "echo", "backend": "echo", "options": {"delay": 0.05}}]}))
    try:
        key = gw.create_key("burst@example.com")
        proxy.delay = 0.03
        body = {**BODY, "stream": True}
        statuses = asyncio.run(_load(gw.url, [key], 400, 200, lambda i: body))
        assert Counter(statuses) == {200: 400}
    finally:
        gw.stop()
        proxy.close()
        db.stop()


def test_outage_then_sigterm_exits_fast_and_counts_every_request_exactly_once(tmp_path):
    port = free_port()
    path = str(tmp_path / "db" / "db.sqlite")
    db = embedded_db.start("sqlite", path, port=port)
    config = {**ECHO, "database": {"timeout": 1.0}}
    gw = start_gateway(tmp_path / "gw", db.uri, config)
    try:
        key = gw.create_key("spool@example.com")
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(5):
            assert httpx.post(gw.url + "/v1/chat/completions", json=BODY,
                              headers=headers).status_code == 200
        wait_until(lambda: _daily(db.uri, gw.db_name) == 5, 10, what="first usage")
        db.stop()
        for i in range(20):                # keys come from the cache, past its TTL too
            r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers,
                           timeout=30)
            assert r.status_code == 200, r.text
            if i == 9:
                time.sleep(2.5)            # key_cache_ttl (2 s) has passed
        start = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(30)
        exit_time = time.monotonic() - start
        print(f"SIGTERM to exit with the database down: {exit_time:.1f}s")
        assert exit_time < 10
        spool = gw.data_dir / "usage-spool.jsonl"
        assert spool.exists() and "count me once" not in spool.read_text()

        db = embedded_db.start("sqlite", path, port=port)
        gw = start_gateway(tmp_path / "gw", db.uri, config, db_name=gw.db_name)
        wait_until(lambda: not spool.exists(), 20, what="spool replayed")
        time.sleep(1.0)
        assert _daily(db.uri, gw.db_name) == 25       # every request, exactly once
        assert _daily(db.uri, gw.db_name, "status_2xx") == 25
    finally:
        gw.stop()
        db.stop()


def test_usage_stored_as_events_by_an_older_version_is_folded_into_rollups(tmp_path, mongo):
    db_name = "legacy_" + os.urandom(4).hex()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)

    async def seed(store):
        await store.db["usage_events"].insert_many([
            {"request_id": f"r{i}", "account_id": "acct_old", "key_id": "key_old",
             "model": "echo", "status": 200 if i < 5 else 500, "prompt_tokens": 3,
             "completion_tokens": 2, "ttft_ms": 12.0, "duration_ms": 40.0,
             "ts": hour + timedelta(minutes=i)} for i in range(7)])
    db_run(mongo.uri, db_name, seed)
    gw = start_gateway(tmp_path, mongo.uri, ECHO, db_name=db_name)
    try:
        counts = _collections(gw)
        assert "usage_events" not in counts
        hourly = db_run(gw.db_uri, db_name, lambda s: s.usage.hourly_for_account("acct_old"))
        assert [(d["requests"], d["errors"], d["completion_tokens"]) for d in hourly] == \
            [(7, 2, 14)]
    finally:
        gw.stop()


def test_a_batch_applied_twice_is_counted_once(mongo):
    """What a retry after a lost acknowledgement, or a spool replay, does: the same batch
    id again (also mixed with rollups it has not reached yet)."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    a = ("acct_a", "key_a", "echo", hour)
    b = ("acct_b", "key_b", "echo", hour)

    async def go(store):
        await store.usage.apply("b_1", {a: {"requests": 2, "prompt_tokens": 10}})
        await store.usage.apply("b_1", {a: {"requests": 2, "prompt_tokens": 10},
                                        b: {"requests": 1}})        # partly applied before
        await store.usage.apply("b_2", {a: {"requests": 1}})
        return ({d["account_id"]: d["requests"] for d in await store.usage.daily.find().to_list()},
                {d["account_id"]: d["requests"] for d in await store.usage.hourly.find().to_list()})
    daily, hourly = db_run(mongo.uri, "once_" + os.urandom(4).hex(), go)
    assert daily == hourly == {"acct_a": 3, "acct_b": 1}


def test_a_batch_spanning_an_hour_boundary_counts_every_hour_in_the_daily_rollup(mongo):
    """A flush at 23:00:00.5 holds requests of 22:59 and of 23:00: two hourly rollups,
    one daily rollup, and the daily one must get both (it once kept only the first)."""
    late = datetime(2026, 11, 27, 22, tzinfo=UTC)
    later = late + timedelta(hours=1)

    async def go(store):
        await store.usage.apply("b_1", {("acct_h", "key_h", "echo", late): {"requests": 2},
                                        ("acct_h", "key_h", "echo", later): {"requests": 3}})
        await store.usage.apply("b_1", {("acct_h", "key_h", "echo", late): {"requests": 2},
                                        ("acct_h", "key_h", "echo", later): {"requests": 3}})
        return ([d["requests"] for d in await store.usage.daily.find().to_list()],
                sorted(d["requests"] for d in await store.usage.hourly.find().to_list()))
    daily, hourly = db_run(mongo.uri, "span_" + os.urandom(4).hex(), go)
    assert daily == [5]
    assert hourly == [2, 3]
