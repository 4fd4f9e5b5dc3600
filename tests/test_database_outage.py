"""A database outage: cached keys keep working, usage waits in the buffer and is written
once the database is back (nothing lost); requests that need the database get a clean
503 with Retry-After."""
import asyncio
import time

import httpx

from gateway import embedded_db
from tests.helpers import db_run, free_port, start_gateway

BODY = {"model": "echo", "messages": [{"role": "user", "content": "outage test"}]}


def test_outage_loses_no_usage_and_fails_cleanly(tmp_path):
    port = free_port()
    path = str(tmp_path / "db" / "db.sqlite")
    db = embedded_db.start("sqlite", path, port=port)
    gw = start_gateway(tmp_path / "gw", db.uri, {
        "plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}],
        "auth": {"key_cache_ttl": 120.0},
        "database": {"timeout": 1.0}})
    try:
        key = gw.create_key("outage@example.com")
        other = gw.create_key("other@example.com")
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.post(gw.url + "/v1/chat/completions", json=BODY,
                          headers=headers).status_code == 200       # the key is cached now
        time.sleep(0.5)
        db.stop()

        for _ in range(3):
            r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers,
                           timeout=30)
            assert r.status_code == 200
        for _ in range(5):
            r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=30,
                           headers={"Authorization": f"Bearer {other}"})   # needs the database
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "service_unavailable"
            assert r.headers["Retry-After"] == "5" and "Traceback" not in r.text
        # The same key in a WebSocket auth message: answered at once, not left to time out.
        async def ws_auth():
            from tests.ws.client import Client, assert_error
            c = await Client.connect(gw)
            await c.send({"type": "auth", "api_key": other})
            assert_error(await c.recv(), 503, "service_unavailable")
            assert await c.recv() is None and c.conn.close_code == 1013
        asyncio.run(ws_auth())          # (before, no answer: the 401 auth_timeout after 10 s)
        time.sleep(1.5)                                                   # flushes fail meanwhile

        db = embedded_db.start("sqlite", path, port=port)                 # the database is back
        deadline = time.monotonic() + 20
        while True:
            ok = sum(d.get("status_2xx", 0) for d in db_run(
                db.uri, gw.db_name, lambda s: s.usage.daily.find({}).to_list()))
            if ok >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        time.sleep(1.0)                  # a retried batch must not be counted twice
        ok = sum(d.get("status_2xx", 0) for d in db_run(
            db.uri, gw.db_name, lambda s: s.usage.daily.find({}).to_list()))
        assert ok == 4          # the first request and the three during the outage
        assert httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=30,
                          headers={"Authorization": f"Bearer {other}"}).status_code == 200
        log = gw.log()
        assert "unhandled" not in log and "Traceback" not in log
        assert log.count("database unavailable (") == 1      # one warning, not one per request
    finally:
        gw.stop()
        db.stop()
