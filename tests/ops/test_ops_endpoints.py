"""/livez, /readyz (and /healthz), x-request-id on every response and in the access log,
and JSON logs."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import tornado.httpclient
import tornado.websocket

from gateway.store import embedded_db
from tests.helpers import free_port, start_gateway
from tests.ws.client import ws_url

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}]}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}


def test_livez_stays_up_while_readyz_reports_database_and_backends(tmp_path):
    db = embedded_db.start("memory", port=free_port())
    down = [tmp_path / "a.down", tmp_path / "b.down"]
    gw = start_gateway(tmp_path / "gw", db.uri, {
        "plugins": {"modules": ["tests.ops.switch_backend"]},
        "models": [{"name": f"m{i}", "backend": "switch", "options": {"down_file": str(f)}}
                   for i, f in enumerate(down)],
        "database": {"timeout": 1.0}})
    try:
        for path in ("/livez", "/readyz", "/healthz"):
            assert httpx.get(gw.url + path).status_code == 200, path
        ready = httpx.get(gw.url + "/readyz").json()
        assert ready["ready"] is True and ready["database"] is True
        assert ready["models"] == {"m0": True, "m1": True} and ready["draining"] is False
        assert httpx.get(gw.url + "/healthz").json()["ok"] is True

        down[0].touch()                                   # one backend down: still ready
        assert httpx.get(gw.url + "/readyz").json()["models"] == {"m0": False, "m1": True}
        assert httpx.get(gw.url + "/readyz").status_code == 200
        down[1].touch()                                   # none healthy: not ready
        r = httpx.get(gw.url + "/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert r.json()["error"]["code"] == "not_ready"
        assert "no model backend is healthy" in r.json()["error"]["message"]
        assert httpx.get(gw.url + "/livez").status_code == 200
        for f in down:
            f.unlink()

        db.stop()                                         # the database goes away
        start = time.monotonic()
        r = httpx.get(gw.url + "/livez", timeout=10)
        livez = time.monotonic() - start
        assert r.status_code == 200 and r.json() == {"status": "ok", "draining": False}
        for path in ("/readyz", "/healthz"):              # /healthz: its alias
            r = httpx.get(gw.url + path, timeout=10)
            assert r.status_code == 503 and r.json()["database"] is False, path
            assert r.json()["ok"] is False and "database" in r.json()["error"]["message"]
        assert livez < 0.5, livez                         # never waits for the database
    finally:
        gw.stop()
        db.stop()


def test_request_ids_on_every_response_and_in_the_access_log(start_gw):
    gw = start_gw(ECHO)
    key = gw.create_key("rid@example.com")
    auth = {"Authorization": f"Bearer {key}"}
    url = gw.url + "/v1/chat/completions"

    # The client's own id comes back on any response, the completion keeps its own id.
    mine = "trace-01.A_b"
    r = httpx.post(url, json=BODY, headers={**auth, "x-request-id": mine})
    assert r.status_code == 200 and r.headers["x-request-id"] == mine
    completion = r.json()["id"]
    assert completion.startswith("chatcmpl-")
    for method, path, headers, status in [
            ("POST", "/v1/chat/completions", {}, 401),
            ("GET", "/v1/nope", auth, 404),
            ("GET", "/livez", {}, 200),
            ("GET", "/dashboard/login", {}, 200)]:
        r = httpx.request(method, gw.url + path, headers={**headers, "x-request-id": mine})
        assert (r.status_code, r.headers["x-request-id"]) == (status, mine), path

    # No (or a malformed) id: the gateway's own; for a completion, the completion's id.
    for bad in [None, "", "a" * 129, "has space", "semi;colon", "ünï".encode()]:
        headers = {} if bad is None else {"x-request-id": bad}
        rid = httpx.get(gw.url + "/livez", headers=headers).headers["x-request-id"]
        assert rid.startswith("req_") and len(rid) == 28 and rid != bad
    r = httpx.post(url, json=BODY, headers={**auth, "x-request-id": "x" * 129})
    assert r.headers["x-request-id"] == r.json()["id"]
    with httpx.stream("POST", url, json={**BODY, "stream": True}, headers=auth) as s:
        rid = s.headers["x-request-id"]
        first = json.loads(next(s.iter_lines())[6:])
    assert rid == first["id"] and rid.startswith("chatcmpl-")
    assert len({httpx.get(gw.url + "/livez").headers["x-request-id"] for _ in range(5)}) == 5

    async def upgrade():
        request = tornado.httpclient.HTTPRequest(ws_url(gw), headers={**auth,
                                                                      "x-request-id": mine})
        conn = await tornado.websocket.websocket_connect(request)
        conn.close()
        return conn.headers.get("x-request-id")
    assert asyncio.run(upgrade()) == mine

    log = gw.log()
    assert "200 POST /v1/chat/completions" in log
    assert f"request_id={mine} completion_id={completion}" in log
    assert f"request_id={rid}" in log and "401 POST /v1/chat/completions" in log


def test_json_logs(start_gw):
    # A first admin with a configured password: no one-time password on the console,
    # so every line of the output is a log line.
    gw = start_gw({**ECHO, "server": {"log_format": "json"}, "dashboard": {
        "admin_email": "root@example.com", "admin_password": "correct horse battery"}})
    key = gw.create_key("json@example.com")
    looks_like_a_key = "ayct_" + "Kq7" * 14
    r = httpx.post(gw.url + "/v1/chat/completions", json=BODY,
                   headers={"Authorization": f"Bearer {key}", "x-request-id": "json-1"})
    assert r.status_code == 200
    httpx.get(gw.url + "/livez", headers={"x-request-id": looks_like_a_key})
    httpx.get(gw.url + "/v1/nope?token=abc", headers={"x-request-id": "json-2"})
    gw.stop()
    lines = [json.loads(line) for line in gw.log().splitlines() if line.strip()]
    assert lines and all({"timestamp", "level", "logger", "message"} <= set(x) for x in lines)
    access = {x["request_id"]: x for x in lines if x["logger"] == "allyoucantoken.access"}
    done = access["json-1"]
    assert done["status"] == 200 and done["method"] == "POST" and done["level"] == "INFO"
    assert done["path"] == "/v1/chat/completions" and done["duration_ms"] >= 0
    assert done["completion_id"] == r.json()["id"]
    assert access["json-2"]["status"] == 404 and access["json-2"]["path"] == "/v1/nope"
    text = gw.log()
    assert looks_like_a_key not in text and "ayct_[REDACTED]" in access
    assert key not in text and "hello there" not in text and "token=abc" not in text
    assert any(x["message"].startswith("shutting down") for x in lines)
