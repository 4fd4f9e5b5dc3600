"""``[limits] outage_policy``: what a limited tier gets while the database cannot be
reached (cut for real through ``tests.db_proxy``), and what is charged once it is back."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from gateway.config import ConfigError, from_dict
from tests.db_proxy import DelayProxy
from tests.helpers import start_gateway
from tests.limits.conftest import (
    TIERS,
    Account,
    body,
    limits_config,
    wait_for_fresh_minute,
)

LIMIT = 60           # requests per minute of the tier
WARM = 4             # requests before the outage
OUTAGE = 6.0         # seconds the database is cut
EVERY = 0.2          # seconds between requests during it


def policy_config(policy: str) -> dict:
    cfg = limits_config(database={"timeout": 1.0})
    cfg["tiers"] = {**TIERS, "outage": {"requests_per_minute": LIMIT, "max_tokens": 20,
                                        "tokens_per_minute": 100_000,
                                        "concurrent_streams": 2}}
    cfg["limits"] = {**cfg["limits"], "lease_ttl": 3.0, "outage_policy": policy}
    return cfg


async def _during(url, headers, proxy):
    """Cut the database; a request every EVERY seconds for OUTAGE seconds. Returns
    [(seconds after the cut, status)]."""
    out = []
    async with httpx.AsyncClient(timeout=30) as c:
        async def one():
            t = time.monotonic()
            try:
                r = await c.post(url + "/v1/chat/completions", json=body(max_tokens=5),
                                 headers=headers)
                out.append((t - cut_at, r.status_code))
            except httpx.HTTPError as exc:
                out.append((t - cut_at, type(exc).__name__))
        proxy.cut()
        cut_at = time.monotonic()
        tasks = []
        while time.monotonic() - cut_at < OUTAGE:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(EVERY)
        await asyncio.gather(*tasks)
    return sorted(out)


def _one_by_one(url, headers, n):
    with httpx.Client(timeout=30) as c:
        return [c.post(url + "/v1/chat/completions", json=body(max_tokens=5),
                       headers=headers).status_code for _ in range(n)]


@pytest.mark.parametrize("policy", ["available", "exact"])
def test_limited_tier_through_an_outage(mongo, tmp_path, policy):
    """A tier with 60 requests/minute and 2 concurrent streams; 4 requests, then the
    database is cut for 6 s while the account sends one every 0.2 s.

    - ``available`` (the default): every request in the outage is served, though the
      leases (about 2 s of demand) ran out and were fenced; more requests in the outage
      then get exactly what is left of the limit (one process: its share is all of it),
      and 429 beyond (its own use alone reaches the limit); once the database is back,
      all of it is charged to the shared counter (exactly the limit) and the next
      request gets 429.
    - ``exact``: served for a second or two, then 503 (before this option: always so).
    """
    proxy = DelayProxy(mongo.port)
    gw = start_gateway(tmp_path / "gw", proxy.uri, policy_config(policy),
                       db_name="outage_" + uuid.uuid4().hex[:8])
    try:
        acct = Account(gw, "outage")
        wait_for_fresh_minute(margin=30)
        with httpx.Client(timeout=30) as c:
            for _ in range(WARM):
                assert c.post(gw.url + "/v1/chat/completions", json=body(max_tokens=5),
                              headers=acct.headers).status_code == 200
        during = asyncio.run(_during(gw.url, acct.headers, proxy))
        served = [t for t, s in during if s == 200]
        last = max(served, default=0.0)
        print(f"outage_policy {policy}: {len(served)} of {len(during)} requests served "
              f"during a {OUTAGE:.0f} s outage, the last {last:.1f} s after its start")
        assert all(s in (200, 503) for _, s in during), during
        if policy == "exact":
            assert any(s == 503 for _, s in during) and last < 3.0, during
            proxy.restore()
            time.sleep(1.5)
            assert acct.counter("requests") == WARM + len(served)
            return
        assert len(served) == len(during), during
        left = LIMIT - WARM - len(served)
        statuses = _one_by_one(gw.url, acct.headers, left + 5)
        assert statuses == [200] * left + [429] * 5, statuses
        proxy.restore()
        time.sleep(1.5)                         # the upkeep charges it
        assert acct.counter("requests") == LIMIT
        r = httpx.post(gw.url + "/v1/chat/completions", json=body(max_tokens=5),
                       headers=acct.headers, timeout=30)
        assert r.status_code == 429, r.text
        assert "Traceback" not in gw.log()
    finally:
        proxy.restore()
        gw.stop()
        proxy.close()


@pytest.mark.parametrize("value", ["maybe", "", "EXACT"])
def test_a_bad_outage_policy_is_a_one_line_error(value):
    with pytest.raises(ConfigError) as err:
        from_dict({"limits": {"outage_policy": value}})
    message = str(err.value)
    assert "limits.outage_policy" in message and "\n" not in message
    assert from_dict({}).limits.outage_policy == "available"
