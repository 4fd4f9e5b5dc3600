"""Leases through database outages, caused for real by cutting the connection
(``tests.db_proxy``): a process whose lease it could not renew stops admitting on it
before it expires, a holder that lives renews before anyone takes its lease back, and
what a dead holder leased but did not use comes back."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from tests.db_proxy import DelayProxy
from tests.helpers import db_run, start_gateway
from tests.limits.conftest import Account, body, limits_config

CAP = 3


def outage_config(ttl: float = 3.0, **limits):
    """The exact outage policy unless ``outage_policy`` says otherwise."""
    cfg = limits_config(database={"timeout": 1.0})
    cfg["limits"] = {**cfg["limits"], "lease_ttl": ttl, "outage_policy": "exact", **limits}
    return cfg


def max_overlap(intervals) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                   key=lambda x: (x[0], x[1]))
    peak = now = 0
    for _, d in edges:
        now += d
        peak = max(peak, now)
    return peak


async def _stream(client, url, headers, words, intervals, statuses, who):
    """One streaming request; an admitted stream's interval is recorded from the moment
    its headers came (admission happened before) to the end of its body."""
    text = " ".join(["w"] * words)
    try:
        async with client.stream("POST", url + "/v1/chat/completions", headers=headers,
                                 json=body("echo-slow", text, stream=True)) as r:
            start = time.monotonic()
            statuses.append((who, r.status_code, start))
            if r.status_code != 200:
                await r.aread()
                return
            async for _ in r.aiter_bytes():
                pass
            intervals.append((start, time.monotonic(), who))
    except httpx.HTTPError:
        statuses.append((who, "error", time.monotonic()))


async def outage_run(a, b, headers, proxy, outage: float, long_words: int,
                     after: float, every: float = 0.5, settle: float = 5.0):
    """A holds CAP long streams; the database is cut for ``outage`` seconds; A's and B's
    clients ask for a short stream every ``every`` seconds throughout, for ``after``
    seconds once the database is back, and for at least ``settle`` seconds after A's long
    streams ended (however late a loaded machine ends them; at most 20 s more).
    Returns (intervals, statuses)."""
    intervals, statuses = [], []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as c:
        longs = [asyncio.create_task(_stream(c, a.url, headers, long_words, intervals,
                                             statuses, "A-long")) for _ in range(CAP)]
        while sum(1 for w, s, _ in statuses if w == "A-long" and s == 200) < CAP:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        proxy.cut()
        cut_at = time.monotonic()
        shorts = []
        end = cut_at + outage + after
        restored = False
        longs_ended = None
        while True:
            now = time.monotonic()
            if longs_ended is None and all(t.done() for t in longs):
                longs_ended = now
            if now >= end and ((longs_ended is not None and now >= longs_ended + settle)
                               or now >= end + 20):
                break
            if not restored and time.monotonic() >= cut_at + outage:
                proxy.restore()
                restored = True
            for gw, who in ((a, "A"), (b, "B")):
                shorts.append(asyncio.create_task(
                    _stream(c, gw.url, headers, 5, intervals, statuses, who)))
            await asyncio.sleep(every)
        await asyncio.gather(*longs, *shorts)
    return intervals, statuses


def test_stream_cap_holds_through_an_outage_longer_than_the_lease(mongo, tmp_path):
    """Gateways A and B share a cap of 3; A holds three long streams when the database
    goes down for more than twice ``lease_ttl``; B (and A) ask for a stream every 0.5 s.
    Never more than 3 streams run at once, during the outage or after it (before the
    fence: B took A's expired slots back at once and ran 3 more beside A's 3)."""
    proxy = DelayProxy(mongo.port)
    db_name = "fence_" + uuid.uuid4().hex[:8]
    cfg = outage_config(ttl=3.0)
    a = start_gateway(tmp_path / "a", proxy.uri, cfg, db_name=db_name)
    b = start_gateway(tmp_path / "b", proxy.uri, cfg, db_name=db_name)
    try:
        acct = Account(a, "streams3")
        intervals, statuses = asyncio.run(outage_run(
            a, b, acct.headers, proxy, outage=8.0, long_words=75, after=9.0))
        peak = max_overlap([(s, e) for s, e, _ in intervals])
        print(f"peak concurrent streams across A and B: {peak} (cap {CAP})")
        assert peak <= CAP, sorted(intervals)
        # Not by refusing everything: once A's long streams ended, B's were admitted.
        last_long = max(e for s, e, w in intervals if w == "A-long")
        assert any(w == "B" and s > last_long for s, _, w in intervals), \
            [x for x in statuses if x[2] > last_long]
        assert "Traceback" not in a.log() + b.log()
    finally:
        a.stop()
        b.stop()
        proxy.close()


def test_quota_leased_by_a_killed_process_comes_back(start_gw):
    """A gateway holding a block of an account's daily quota is SIGKILLed: what it leased
    but did not use returns once its holding has expired (``lease_ttl``), so the account
    can use its whole day's quota through another gateway: no more, and no less than
    one request's reservation below it (before: the killed process's unused block, a
    quarter of the day, was gone until midnight)."""
    cfg = outage_config(ttl=3.0, lease_idle=5.0)     # no idle give-back before the kill
    doomed = start_gw(cfg)
    other = start_gw(cfg, db_name=doomed.db_name)
    acct = Account(doomed, "daily")
    limit = 20000
    text = " ".join(["word"] * 150)
    cost = 150 + 20                                  # echo: 150 prompt + 20 completion

    def run(gw, n=None, until=None):
        used = refused = 0
        with httpx.Client(base_url=gw.url, timeout=30, headers=acct.headers) as c:
            while (n is None or used < n * cost) and (until is None or time.monotonic() < until):
                r = c.post("/v1/chat/completions", json=body("echo", text, max_tokens=20))
                if r.status_code == 200:
                    used += r.json()["usage"]["total_tokens"]
                    refused = 0
                elif r.status_code == 429:
                    refused += 1
                    if n is not None or refused > 20:     # refused for ~4 s: the limit
                        break
                    time.sleep(0.2)
                else:
                    raise AssertionError(r.text)
        return used

    used_a = run(doomed, n=20)
    time.sleep(1.5)                  # its use is reported (each upkeep round), then...
    doomed.kill()                    # ...SIGKILL: no settle, no give-back

    def day_counter():
        from datetime import UTC, datetime
        day = f"{datetime.now(UTC):%Y%m%d}"
        return db_run(other.db_uri, other.db_name,
                      lambda s: s.counters.quota_values(f"q:d:{acct.id}", day)).get("tokens", 0)
    stranded = day_counter() - used_a
    print(f"killed holder: {used_a} tokens used, the day's counter says {used_a + stranded}")
    used_b = run(other, until=time.monotonic() + 60)
    lost = limit - used_a - used_b
    print(f"quota lost to the killed holder: {lost} tokens ({lost / limit:.1%} of the day), "
          f"stranded at the kill: {stranded} ({stranded / limit:.1%})")
    assert stranded > cost                            # it did hold an unused block
    assert used_a + used_b <= limit                   # never over-admitted
    assert lost < 2 * cost                            # and its block came back
