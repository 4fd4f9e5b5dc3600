"""Tier limits are exact under concurrency and across processes, and leak no slots."""
import asyncio
import json
import socket
import time
from collections import Counter

import httpx

from tests.limits.conftest import (Account, body, burst, limits_config,
                                   wait_for_fresh_minute)

RL_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
              "x-ratelimit-reset-requests")


def test_requests_per_minute_is_exact_under_a_burst(limits_gw):
    acct = Account(limits_gw, "rpm5")
    wait_for_fresh_minute()
    responses = asyncio.run(burst([(limits_gw.url, acct.headers)], 25, body()))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 5, 429: 20}
    assert acct.counter("requests") == 5                       # the server's own counter agrees
    denied = next(r for r in responses if r.status_code == 429)
    err = denied.json()["error"]
    assert err["code"] == "requests_per_minute" and err["type"] == "rate_limit_error"
    assert "requests per minute" in err["message"]
    assert 1 <= int(denied.headers["Retry-After"]) <= 60
    for r in responses:                                    # headers on every response
        assert all(h in r.headers for h in RL_HEADERS), r.headers
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"])
                       for r in responses if r.status_code == 200)
    assert remaining == [0, 1, 2, 3, 4]
    assert all(r.headers["x-ratelimit-limit-requests"] == "5" for r in responses)


def test_limit_is_shared_exactly_by_two_gateway_processes(limits_gw, start_gw):
    second = start_gw(limits_config(), db_name=limits_gw.db_name)
    acct = Account(limits_gw, "rpm6")
    wait_for_fresh_minute()
    responses = asyncio.run(burst([(limits_gw.url, acct.headers), (second.url, acct.headers)],
                                  15, body()))
    assert Counter(r.status_code for r in responses) == {200: 6, 429: 24}
    assert acct.counter("requests") == 6


def test_concurrent_stream_cap_holds_at_every_instant(limits_gw):
    acct = Account(limits_gw, "streams2")
    peak_leases = 0
    intervals = []

    async def stream(client):
        start = time.monotonic()
        async with client.stream("POST", "/v1/chat/completions", headers=acct.headers,
                                 json=body("echo-slow", "a b c d e f g h", stream=True)) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code, r
            async for _ in r.aiter_bytes():
                pass
            intervals.append((start, time.monotonic()))
            return 200, r

    async def watch(stop):
        """Sample the server's own gauge of streams in progress."""
        nonlocal peak_leases
        async with httpx.AsyncClient(base_url=limits_gw.url) as client:
            while not stop.is_set():
                text = (await client.get("/metrics")).text
                line = next(x for x in text.splitlines()
                            if x.startswith('ayct_active_streams{transport="sse"}'))
                peak_leases = max(peak_leases, int(float(line.split()[-1])))
                await asyncio.sleep(0.02)

    async def main():
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(stop))
        async with httpx.AsyncClient(base_url=limits_gw.url, timeout=60) as client:
            results = await asyncio.gather(*(stream(client) for _ in range(20)))
        stop.set()
        await watcher
        return results

    results = asyncio.run(main())
    statuses = Counter(s for s, _ in results)
    assert 1 <= statuses[200] <= 2 and statuses[200] + statuses[429] == 20
    denied = next(r for s, r in results if s == 429)
    assert denied.json()["error"]["code"] == "concurrent_streams"
    assert denied.headers["Retry-After"] == "1"
    assert 1 <= peak_leases <= 2                  # the server never ran more than the cap
    for i, (s1, e1) in enumerate(intervals):      # nor did the clients ever see more
        overlapping = sum(1 for s2, e2 in intervals if s2 < e1 and s1 < e2)
        assert overlapping <= 2
    assert acct.live_leases(settled=True) == 0                # and every slot was released


def _open_stream(gw, acct, text):
    payload = json.dumps(body("echo-slow", text, stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nAuthorization: Bearer " + acct.key.encode() +
                 b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    data = b""
    while b"data: " not in data:
        data += sock.recv(65536)
    return sock


def _wait(predicate, bound):
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < bound, f"not within {bound}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_client_cancel_frees_the_slot_at_once(limits_gw):
    acct = Account(limits_gw, "streams1")
    sock = _open_stream(limits_gw, acct, " ".join(["word"] * 50))
    assert acct.live_leases() == 1
    r = httpx.post(limits_gw.url + "/v1/chat/completions", json=body(), headers=acct.headers)
    assert r.status_code == 429
    sock.close()
    _wait(lambda: acct.live_leases() == 0, 2.0)
    r = httpx.post(limits_gw.url + "/v1/chat/completions", json=body(), headers=acct.headers)
    assert r.status_code == 200


def test_backend_error_frees_the_slot(limits_gw):
    acct = Account(limits_gw, "streams1")
    r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers, timeout=30,
                   json=body("echo-slow", "one two FAIL three", stream=True))
    assert r.status_code == 200                      # the stream had started
    assert '"code":"backend_error"' in r.text.replace(" ", "")
    assert acct.live_leases(settled=True) == 0
    r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers,
                   json=body("echo", "FAIL"))
    assert r.status_code == 502 and r.json()["error"]["code"] == "backend_error"
    assert acct.live_leases(settled=True) == 0


def test_killed_process_slot_expires_within_the_lease_ttl(limits_gw, start_gw):
    doomed = start_gw(limits_config(), db_name=limits_gw.db_name)
    acct = Account(limits_gw, "streams1")
    sock = _open_stream(doomed, acct, " ".join(["word"] * 200))
    assert acct.live_leases() == 1
    doomed.kill()                                    # SIGKILL: no settle, no release
    sock.close()
    r = httpx.post(limits_gw.url + "/v1/chat/completions", json=body(), headers=acct.headers)
    assert r.status_code == 429
    ttl = limits_config()["limits"]["lease_ttl"]
    waited = _wait(lambda: httpx.post(limits_gw.url + "/v1/chat/completions", json=body(),
                                      headers=acct.headers).status_code == 200, ttl + 2)
    print(f"slot of the killed process freed after {waited:.1f}s (lease ttl {ttl}s)")


def test_tokens_are_reserved_then_reconciled_with_real_usage(limits_gw):
    acct = Account(limits_gw, "tokens")
    wait_for_fresh_minute()
    totals = 0
    for _ in range(6):
        r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers,
                       json=body("echo", "one two three", max_tokens=20))
        assert r.status_code == 200
        totals += r.json()["usage"]["total_tokens"]
        assert "x-ratelimit-remaining-tokens" in r.headers
    # Reservations were prompt estimate + 20 each; only the real usage stays counted.
    assert acct.counter("tokens") == totals
    too_big = httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers,
                         json=body("echo", "x", max_tokens=21))
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "max_tokens"


def test_tokens_per_minute_denies_with_429(limits_gw):
    acct = Account(limits_gw, "tokens")
    wait_for_fresh_minute()
    long_text = " ".join(["word"] * 150)   # ~190 tokens estimated per request
    codes = [httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers,
                        json=body("echo", long_text, max_tokens=20)).status_code
             for _ in range(3)]
    # echo reports 150 prompt + 20 completion tokens each: two fit in 400, the third not.
    assert codes == [200, 200, 429]


def test_model_outside_the_tier_is_403_and_clamp_policy(limits_gw):
    narrow = Account(limits_gw, "narrow")
    r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=narrow.headers,
                   json=body("echo-b"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    models = httpx.get(limits_gw.url + "/v1/models", headers=narrow.headers).json()
    assert [m["id"] for m in models["data"]] == ["echo"]
    r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=narrow.headers,
                   json=body("echo", "x" * 400))
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_large"

    clamp = Account(limits_gw, "clamp")
    r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=clamp.headers,
                   json=body("echo", "a b c d e f g", max_tokens=100))
    assert r.status_code == 200
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3


def test_custom_limiter_composes_with_the_tier_limiter(limits_gw):
    acct = Account(limits_gw, "roomy")
    wait_for_fresh_minute()
    for _ in range(4):
        r = httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers,
                       json=body("echo-b"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "model_paused"
        assert r.headers["Retry-After"] == "30"
    # The tier limiter had reserved a request, tokens and a slot each time: all released.
    assert acct.counter("requests") == 0 and acct.counter("tokens") == 0
    assert acct.live_leases(settled=True) == 0
    assert httpx.post(limits_gw.url + "/v1/chat/completions", headers=acct.headers,
                      json=body("echo")).status_code == 200
    assert acct.counter("requests") == 1


def test_an_idle_process_gives_its_unused_quota_back_to_the_others(limits_gw, start_gw):
    """Quota leases: what one process leased but did not use goes back to the shared
    counter once the account is idle there, so another process can admit it."""
    from tests.limits.conftest import LEASE_IDLE

    other = start_gw(limits_config(), db_name=limits_gw.db_name)
    acct = Account(limits_gw, "rpm6")
    wait_for_fresh_minute(margin=15)
    first = asyncio.run(burst([(limits_gw.url, acct.headers)], 2, body()))
    assert [r.status_code for r in first] == [200, 200]
    time.sleep(LEASE_IDLE * 3)                   # the first process is idle: it gives back
    second = asyncio.run(burst([(other.url, acct.headers)], 10, body()))
    assert Counter(r.status_code for r in second) == {200: 4, 429: 6}
    assert acct.counter("requests") == 6

