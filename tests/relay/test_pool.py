"""The upstream connection pool: a stream that gets no connection slot within
``pool_timeout`` is refused at once with 503 ``backend_busy`` (never queued silently),
while health probes, on their own connections, keep the replica up."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.backends.test_openai_compatible import replica_up
from tests.inprocess import start_inprocess


@pytest.fixture(scope="module")
def pool_gw(mongo, upstream, tmp_path_factory):
    g = start_inprocess(tmp_path_factory.mktemp("pool"), mongo.uri, {
        "server": {"metrics_public": True},
        "models": [{"name": "tiny", "backend": "openai_compatible",
                    "options": {"base_url": upstream + "/v1", "max_connections": 2,
                                "pool_timeout": 0.5, "health_interval": 0.1}}]})
    g.key = g.create_key()
    yield g
    g.stop()


BODY = {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_pool_exhaustion_is_a_clear_503_and_health_stays_up(pool_gw, up):
    up.set(tokens=15, interval=0.1)          # each stream holds its connection ~1.5 s
    headers = {"Authorization": f"Bearer {pool_gw.key}"}
    url = pool_gw.url + "/v1/chat/completions"

    async def go():
        async with httpx.AsyncClient(timeout=30) as c:
            async def stream():
                async with c.stream("POST", url, json=BODY, headers=headers) as r:
                    return r.status_code, len([x async for x in r.aiter_lines() if x])
            holders = [asyncio.ensure_future(stream()) for _ in range(2)]
            await asyncio.sleep(0.4)                 # both hold their slots now
            start = time.monotonic()
            refused = await c.post(url, json=BODY, headers=headers)
            waited = time.monotonic() - start
            models = await c.get(pool_gw.url + "/v1/models", headers=headers)
            return await asyncio.gather(*holders), refused, waited, models
    held, refused, waited, models = asyncio.run(go())
    assert [s for s, _ in held] == [200, 200] and all(n > 15 for _, n in held)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    err = refused.json()["error"]
    assert err["code"] == "backend_busy" and "0.5s" in err["message"]
    assert 0.45 <= waited < 1.4
    # The probes (every 0.1 s) never waited behind the two streams.
    assert models.json()["data"][0]["health"] == "ok"
    assert replica_up(pool_gw, "tiny", up.url) == 1
    # Slots come back: the next stream is served.
    ok = httpx.post(url, json=BODY, headers=headers, timeout=30)
    assert ok.status_code == 200 and ok.text.rstrip().endswith("[DONE]")
