"""Per-key controls through a real gateway: per-key rate limits are exact under a burst
and never above the tier, expiry, model lists and IP allowlists are enforced from the
cached key, and GET /v1/me reports the key, the tier and the quota left."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx

from tests.admin.conftest import KEY_TTL, admin_key, bearer, make_account
from tests.dashboard.support import assert_api_error
from tests.limits.conftest import body, wait_for_fresh_minute


def chat(gw, key, model="echo", headers=None, **kw):
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      headers={**bearer(key), **(headers or {})}, json=body(model, **kw))


async def _burst(url, headers, n):
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:
        return await asyncio.gather(*(c.post(url + "/v1/chat/completions", headers=headers,
                                             json=body()) for _ in range(n)))


def test_per_key_requests_per_minute_is_exact_under_a_burst(admin_gw):
    acc, (limited, other) = make_account(admin_gw, keys=2)
    write = admin_key(admin_gw, "admin:read", "admin:write")
    key_id = next(k["id"] for k in httpx.get(
        f"{admin_gw.url}/admin/api/accounts/{acc['_id']}", headers=bearer(write)).json()["keys"]
        if k["name"] == "k0")
    resp = httpx.patch(f"{admin_gw.url}/admin/api/keys/{key_id}", headers=bearer(write),
                       json={"limits": {"requests_per_minute": 4}})
    assert resp.status_code == 200 and resp.json()["limits"]["requests_per_minute"] == 4
    wait_for_fresh_minute()
    responses = asyncio.run(_burst(admin_gw.url, bearer(limited), 30))
    assert Counter(r.status_code for r in responses) == {200: 4, 429: 26}
    err = next(r for r in responses if r.status_code == 429).json()["error"]
    assert err["code"] == "key_requests_per_minute" and err["type"] == "rate_limit_error"
    assert "this API key's requests per minute" in err["message"]
    # the account's other key is not held back by it
    assert Counter(r.status_code for r in asyncio.run(
        _burst(admin_gw.url, bearer(other), 10))) == {200: 10}


def test_per_key_limit_is_never_above_the_tier(admin_gw):
    acc, (key,) = make_account(admin_gw, tier="narrow")
    write = admin_key(admin_gw, "admin:read", "admin:write")
    key_id = httpx.get(f"{admin_gw.url}/admin/api/accounts/{acc['_id']}",
                       headers=bearer(write)).json()["keys"][0]["id"]
    url = f"{admin_gw.url}/admin/api/keys/{key_id}"
    err = assert_api_error(httpx.patch(url, headers=bearer(write),
                                       json={"limits": {"requests_per_minute": 21}}),
                           400, "invalid_key_controls")
    assert err["param"] == "requests_per_minute" and "at most 20" in err["message"]
    # a model outside the tier cannot be allowed on a key either
    assert_api_error(httpx.patch(url, headers=bearer(write),
                                 json={"allowed_models": ["echo-b"]}), 400,
                     "invalid_key_controls")
    # a limit the tier leaves open can be set; the tier's own still holds above it
    ok = httpx.patch(url, headers=bearer(write),
                     json={"limits": {"tokens_per_day": 10**8}})
    assert ok.status_code == 200 and ok.json()["limits"]["tokens_per_day"] == 10**8
    wait_for_fresh_minute()
    time.sleep(KEY_TTL * 2)
    statuses = Counter(r.status_code for r in asyncio.run(_burst(admin_gw.url, bearer(key),
                                                                  30)))
    assert statuses == {200: 20, 429: 10}


def test_expired_key_gets_401(admin_gw):
    _, (key,) = make_account(admin_gw, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert_api_error(chat(admin_gw, key), 401, "expired_api_key")
    # a key that expires while it is cached stops working at its expiry
    acc, (soon,) = make_account(admin_gw, expires_at=datetime.now(UTC) + timedelta(seconds=2))
    assert chat(admin_gw, soon).status_code == 200
    time.sleep(2.2)
    err = assert_api_error(chat(admin_gw, soon), 401, "expired_api_key")
    assert "expired" in err["message"]
    assert_api_error(httpx.get(admin_gw.url + "/v1/me", headers=bearer(soon)), 401,
                     "expired_api_key")


def test_model_outside_the_keys_list_is_403(admin_gw):
    _, (key,) = make_account(admin_gw, allowed_models=["echo-b"])
    err = assert_api_error(chat(admin_gw, key, "echo"), 403, "model_not_allowed")
    assert err["param"] == "model" and "echo-b" in err["message"]
    assert chat(admin_gw, key, "echo-b").status_code == 200
    models = httpx.get(admin_gw.url + "/v1/models",
                       headers={"Authorization": f"Bearer {key}"}).json()
    assert [m["id"] for m in models["data"]] == ["echo-b"]      # the key's list, not the tier's


def test_ip_outside_the_allowlist_is_403(admin_gw):
    _, (key,) = make_account(admin_gw, allowed_cidrs=["10.0.0.0/8", "2001:db8::/32"])
    # loopback is a trusted proxy here: the client is the address it forwards
    assert chat(admin_gw, key, headers={"X-Forwarded-For": "10.20.30.40"}).status_code == 200
    assert chat(admin_gw, key, headers={"X-Forwarded-For": "2001:db8::7"}).status_code == 200
    err = assert_api_error(chat(admin_gw, key, headers={"X-Forwarded-For": "192.0.2.9"}),
                           403, "ip_not_allowed")
    assert "192.0.2.9" in err["message"]
    # without the header the client is loopback itself, which is not on the list
    assert_api_error(chat(admin_gw, key), 403, "ip_not_allowed")
    # an untrusted hop's claim is not believed: the nearest untrusted address counts
    assert_api_error(chat(admin_gw, key, headers={"X-Forwarded-For": "10.1.1.1, 192.0.2.1"}),
                     403, "ip_not_allowed")


def test_v1_me_reports_key_tier_and_quota_left_today(admin_gw):
    acc, (key,) = make_account(admin_gw, limits={"tokens_per_day": 100000,
                                                 "requests_per_minute": 50},
                               allowed_models=["echo"])
    me = httpx.get(admin_gw.url + "/v1/me", headers=bearer(key)).json()
    assert me["account"]["id"] == acc["_id"] and me["account"]["tier"] == "free"
    assert me["key"]["limits"] == {"requests_per_minute": 50, "tokens_per_minute": None,
                                   "tokens_per_day": 100000}
    assert me["key"]["allowed_models"] == ["echo"] and "sha256" not in me["key"]
    assert me["tier"]["tokens_per_day"] == 1000000 and me["tier"]["requests_per_minute"] == 1000
    assert me["remaining"]["account"]["tokens_per_day"] == {"limit": 1000000, "used": 0,
                                                            "remaining": 1000000}
    assert me["remaining"]["key"]["tokens_per_minute"] is None
    used = 0
    for _ in range(3):
        r = chat(admin_gw, key, max_tokens=5)
        assert r.status_code == 200
        used += r.json()["usage"]["total_tokens"]
    me = httpx.get(admin_gw.url + "/v1/me", headers=bearer(key)).json()
    assert me["remaining"]["account"]["tokens_per_day"]["used"] == used
    assert me["remaining"]["key"]["tokens_per_day"] == {"limit": 100000, "used": used,
                                                        "remaining": 100000 - used}
    assert me["remaining"]["key"]["requests_per_minute"]["used"] in (3, 0)  # minute may roll
    assert_api_error(httpx.get(admin_gw.url + "/v1/me"), 401, "missing_api_key")


def test_per_key_tokens_per_day_refuses_what_would_pass_it(admin_gw):
    _, (key,) = make_account(admin_gw, limits={"tokens_per_day": 300})
    err = assert_api_error(chat(admin_gw, key, max_tokens=400), 429, "key_tokens_per_day")
    assert "this key's tokens per day limit of 300" in err["message"]
    assert chat(admin_gw, key, max_tokens=20).status_code == 200


def test_per_key_limit_is_exact_across_two_gateway_processes(admin_gw, admin_inbox, start_gw):
    from tests.admin.conftest import admin_sections
    second = start_gw(admin_sections(admin_inbox.port), db_name=admin_gw.db_name)
    _, (key,) = make_account(admin_gw, limits={"requests_per_minute": 6})
    wait_for_fresh_minute()

    async def together():
        return await asyncio.gather(_burst(admin_gw.url, bearer(key), 15),
                                    _burst(second.url, bearer(key), 15))
    first, other = asyncio.run(together())
    assert Counter(r.status_code for r in first + other) == {200: 6, 429: 24}


def test_per_key_pools_cost_no_database_round_trip_per_request(admin_gw):
    from tests.helpers import db_commands
    _, (key,) = make_account(admin_gw, limits={"requests_per_minute": 1000,
                                               "tokens_per_minute": 200000,
                                               "tokens_per_day": 1000000})

    async def load(n, concurrency=20):
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=60) as c:
            async def one():
                async with sem:
                    return (await c.post(admin_gw.url + "/v1/chat/completions",
                                         headers=bearer(key), json=body(max_tokens=5)))
            return await asyncio.gather(*(one() for _ in range(n)))
    asyncio.run(load(40))                                   # warm: key cached, leases held
    before = db_commands(admin_gw.url)
    responses = asyncio.run(load(600))
    after = db_commands(admin_gw.url)
    assert all(r.status_code == 200 for r in responses)
    takes = after.get("findAndModify", 0) - before.get("findAndModify", 0)
    print(f"quota takes for 600 requests with 4 pools: {takes}")   # 29 measured
    assert takes / 600 <= 0.1


def test_websocket_applies_the_same_key_controls(admin_gw):
    import pytest
    import tornado.httpclient

    from tests.ws.client import HELLO, Client, assert_error
    _, (key,) = make_account(admin_gw, allowed_cidrs=["10.0.0.0/8"], allowed_models=["echo-b"])

    async def go():
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await Client.connect(admin_gw, key, {"X-Forwarded-For": "192.0.2.1"})
        assert refused.value.code == 403
        ws = await Client.connect(admin_gw, key, {"X-Forwarded-For": "10.2.3.4"})
        (denied,) = await ws.chat("a", HELLO)
        assert_error(denied, 403, "model_not_allowed", "a", "model")
        assert (await ws.chat("b", {**HELLO, "model": "echo-b"}))[-1]["type"] == "done"
        ws.close()
        # A key sent in an auth message is checked against the same forwarded address.
        ws = await Client.connect(admin_gw, None, {"X-Forwarded-For": "10.2.3.4"})
        await ws.send({"type": "auth", "api_key": key})
        assert await ws.recv() == {"type": "authenticated"}
        ws.close()
        ws = await Client.connect(admin_gw, None, {"X-Forwarded-For": "192.0.2.1"})
        await ws.send({"type": "auth", "api_key": key})
        assert_error(await ws.recv(), 403, "ip_not_allowed")
        ws.close()
    asyncio.run(go())
