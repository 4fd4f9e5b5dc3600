"""Rolling restarts: SIGTERM drains. Running streams finish (SSE, JSON, WebSocket) while
new requests go to the other gateway; a request on a kept-alive connection is served with
``Connection: close`` (its client's next connection goes elsewhere: no failure behind a
round-robin proxy); streams still running at ``drain_timeout`` end with a final error
event and a well-formed end of the response."""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import httpx

from tests.helpers import free_port, start_process, stop_process
from tests.ws.client import Client

SLOW = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "slow", "backend": "echo", "options": {"delay": 0.05}}]}


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def body(n: int, stream: bool = True) -> dict:
    return {"model": "slow", "stream": stream, "messages": [{"role": "user", "content": words(n)}]}


async def sse(client: httpx.AsyncClient, url: str, key: str, n: int, started: asyncio.Event):
    """One SSE stream: its events (JSON or '[DONE]'), the time it ended, and whether the
    chunked body ended properly (httpx raises on a cut-off body)."""
    events = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body(n),
                             headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
                started.set()
    return events, time.monotonic()


def text_of(events) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


def test_rolling_restart_finishes_running_streams_and_sends_new_ones_elsewhere(start_gw,
                                                                               tmp_path):
    a = start_gw({**SLOW, "server": {"drain_timeout": 20}})
    b = start_gw({**SLOW, "server": {"drain_timeout": 20}}, db_name=a.db_name)
    key = a.create_key("rolling@example.com")
    port = free_port()
    lb = start_process([sys.executable, "-m", "tests.ops.balancer", "--port", str(port),
                        a.url.rsplit(":", 1)[1], b.url.rsplit(":", 1)[1]],
                       f"http://127.0.0.1:{port}/livez", tmp_path / "lb.log")
    lb_url = f"http://127.0.0.1:{port}"
    n = 40                                             # about 2 s per stream

    async def main():
        async with httpx.AsyncClient(timeout=30) as client, \
                httpx.AsyncClient(timeout=30) as kept, httpx.AsyncClient(timeout=30) as kept2:
            for c in (kept, kept2):                                    # kept-alive connections
                assert (await c.get(a.url + "/readyz")).status_code == 200
            started = [asyncio.Event() for _ in range(2)]
            streams = [asyncio.create_task(sse(client, a.url, key, n, ev)) for ev in started]
            plain = asyncio.create_task(client.post(
                a.url + "/v1/chat/completions", json=body(n, stream=False),
                headers={"Authorization": f"Bearer {key}"}))
            sock = await Client.connect(a, key)
            await sock.send({"type": "chat", "id": "running", "body": body(n)})
            assert (await sock.next_for("running"))["type"] == "start"
            for ev in started:
                await ev.wait()
            t0 = time.monotonic()
            a.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # A new API request on a kept-alive connection: served, and told to close it
            # (before: 503 server_shutdown, a failure for a client that does not retry).
            served = await kept2.post(a.url + "/v1/chat/completions", json=body(3, False),
                                      headers={"Authorization": f"Bearer {key}"})
            assert served.status_code == 200, served.text
            assert served.json()["choices"][0]["message"]["content"] == "w0 w1 w2 "
            assert served.headers["connection"] == "close"
            # Not ready on a kept-alive connection, and told to close it.
            r = await kept.get(a.url + "/readyz")
            assert r.status_code == 503 and r.json()["draining"] is True
            assert r.json()["error"]["code"] == "not_ready"
            assert r.headers["connection"] == "close" and r.headers["x-request-id"]
            # No new connections to A; a new request on an open socket is refused.
            try:
                await httpx.AsyncClient().get(a.url + "/livez", timeout=2)
                raise AssertionError("the draining gateway still accepts connections")
            except httpx.ConnectError:
                pass
            await sock.send({"type": "chat", "id": "late", "body": body(3)})
            late = await sock.next_for("late")
            assert late["type"] == "error" and late["status"] == 503
            assert late["error"]["code"] == "server_shutdown"
            # New requests through the load balancer: all answered (by B).
            new = await asyncio.gather(*(client.post(
                lb_url + "/v1/chat/completions", json=body(3, stream=False),
                headers={"Authorization": f"Bearer {key}"}) for _ in range(6)))
            assert [r.status_code for r in new] == [200] * 6
            ws_msgs = await sock.until_final("running")
            ws_end = time.monotonic()
            rest = []
            while (msg := await sock.recv(timeout=10)) is not None:
                rest.append(msg)
            results = await asyncio.gather(*streams)
            return t0, served, results, await plain, ws_msgs, ws_end, rest, sock, new

    try:
        t0, served, results, plain, ws_msgs, ws_end, rest, sock, new = asyncio.run(main())
        code = a.proc.wait(20)
        exited = time.monotonic()
    finally:
        stop_process(lb)
    expected = " ".join(words(n).split()) + " "
    for events, _ in results:                          # the SSE streams ran to the end
        assert text_of(events) == expected and events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == \
        expected
    assert ws_msgs[-1]["type"] == "done" and ws_msgs[-1]["finish_reason"] == "stop"
    assert "".join(m.get("content", "") for m in ws_msgs) == expected
    assert [m["error"]["code"] for m in rest] == ["server_shutdown"]   # then the goodbye
    assert sock.conn.close_code == 1001
    last_end = max([end for _, end in results] + [ws_end])
    print(f"streams ended {last_end - t0:.2f}s after SIGTERM; the gateway exited "
          f"{exited - last_end:.2f}s after the last one")
    assert code == 0
    assert exited - last_end < 5                       # no waiting for the drain_timeout
    # Every new request went to B; A recorded its running requests as complete, and the
    # one it served on a kept-alive connection while draining.
    served_by_b = {e["request_id"] for e in b.usage_events()}
    assert {r.json()["id"] for r in new} <= served_by_b
    a_events = a.usage_events()
    assert len(a_events) == 5 and {e["status"] for e in a_events} == {200}
    assert served.json()["id"] in {e["request_id"] for e in a_events}
    assert not served_by_b & {e["request_id"] for e in a_events}


def test_streams_still_running_at_drain_timeout_end_cleanly(start_gw):
    drain_timeout = 1.5
    gw = start_gw({**SLOW, "server": {"drain_timeout": drain_timeout}})
    key = gw.create_key("cutoff@example.com")
    n = 400                                            # about 20 s: longer than the drain

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            started = asyncio.Event()
            stream = asyncio.create_task(sse(client, gw.url, key, n, started))
            plain = asyncio.create_task(client.post(
                gw.url + "/v1/chat/completions", json=body(n, stream=False),
                headers={"Authorization": f"Bearer {key}"}))
            sock = await Client.connect(gw, key)
            await sock.send({"type": "chat", "id": 7, "body": body(n)})
            assert (await sock.next_for(7))["type"] == "start"
            await started.wait()
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            ws_msgs = await sock.until_final(7)
            ws_end = time.monotonic()
            rest = []
            while (msg := await sock.recv(timeout=10)) is not None:
                rest.append(msg)
            events, sse_end = await stream
            plain = await plain
            return t0, events, sse_end, plain, time.monotonic(), ws_msgs, ws_end, rest, sock

    t0, events, sse_end, plain, plain_end, ws_msgs, ws_end, rest, sock = asyncio.run(main())
    code = gw.proc.wait(20)
    exited = time.monotonic()
    print(f"drain_timeout {drain_timeout}s: SSE ended after {sse_end - t0:.2f}s, JSON after "
          f"{plain_end - t0:.2f}s, WebSocket after {ws_end - t0:.2f}s; exit after "
          f"{exited - t0:.2f}s")
    # SSE: the words so far, then a final error event, and a complete chunked body.
    assert events[-1]["error"]["code"] == "server_shutdown" and "[DONE]" not in events
    assert set(events[-1]["error"]) == {"message", "type", "param", "code"}
    relayed = text_of(events[:-1]).split()
    assert 10 < len(relayed) < n and relayed == words(len(relayed)).split()
    # JSON: a 503 OpenAI-style error that says to retry.
    assert plain.status_code == 503 and plain.json()["error"]["code"] == "server_shutdown"
    assert plain.headers["retry-after"] == "1"
    # WebSocket: the request's own error, then the goodbye and close code 1001.
    assert ws_msgs[-1]["type"] == "error" and ws_msgs[-1]["error"]["code"] == "server_shutdown"
    assert [m["error"]["code"] for m in rest] == ["server_shutdown"] and rest[0]["id"] is None
    assert sock.conn.close_code == 1001
    for end in (sse_end, plain_end, ws_end):           # at the bound, not before, not long after
        assert drain_timeout - 0.1 < end - t0 < drain_timeout + 1.5
    assert code == 0 and exited - t0 < drain_timeout + 6
    events = gw.usage_events()
    assert len(events) == 3 and {e["status"] for e in events} == {499}


def test_keep_alive_clients_behind_a_balancer_see_no_failure_in_a_rolling_restart(
        start_gw, tmp_path):
    """Clients that keep their connections alive (as SDKs do) send requests through a
    round-robin TCP balancer to A and B, without retries; A gets SIGTERM midway. Every
    request succeeds: those that reach A on a kept-alive connection while it drains are
    served with ``Connection: close``, so the client's next connection goes to B (before:
    503 server_shutdown, 15 of 401 in the issue)."""
    a = start_gw({**SLOW, "server": {"drain_timeout": 20}})
    b = start_gw({**SLOW, "server": {"drain_timeout": 20}}, db_name=a.db_name)
    key = a.create_key("keepalive@example.com")
    port = free_port()
    lb = start_process([sys.executable, "-m", "tests.ops.balancer", "--port", str(port),
                        a.url.rsplit(":", 1)[1], b.url.rsplit(":", 1)[1]],
                       f"http://127.0.0.1:{port}/livez", tmp_path / "lb.log")
    lb_url = f"http://127.0.0.1:{port}"
    outcomes: list[str] = []
    closing: list[bool] = []


    async def client_loop(pause: float, done: asyncio.Event) -> None:
        # one kept-alive connection per client, no retries
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1),
                                     transport=httpx.AsyncHTTPTransport(retries=0)) as c:
            while not done.is_set():
                try:
                    r = await c.post(lb_url + "/v1/chat/completions",
                                     json=body(2, stream=False),
                                     headers={"Authorization": f"Bearer {key}"})
                    ok = r.status_code == 200 and \
                        r.json()["choices"][0]["message"]["content"] == "w0 w1 "
                    outcomes.append("ok" if ok else f"{r.status_code} {r.text[:120]}")
                    closing.append(r.headers.get("connection") == "close")
                except httpx.HTTPError as exc:
                    outcomes.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause)

    async def main() -> float:
        done = asyncio.Event()
        loops = [asyncio.create_task(client_loop(pause, done))
                 for pause in (0, 0, 0, 0.05, 0.2, 0.5, 1.0, 1.5)]
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(4)
        done.set()
        await asyncio.gather(*loops)
        return t0

    try:
        asyncio.run(main())
        code = a.proc.wait(20)
    finally:
        stop_process(lb)
    failed = [o for o in outcomes if o != "ok"]
    print(f"{len(outcomes)} requests, {len(failed)} failed, {sum(closing)} answered with "
          f"Connection: close by the draining gateway")
    assert failed == [], failed
    assert len(outcomes) > 50 and sum(closing) >= 1
    assert code == 0
    assert b.usage_events() and a.usage_events()
