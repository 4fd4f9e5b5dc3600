"""Requests wait in the gateway, not in the model server, when a model is at capacity:
waiting clients are told, a client that leaves is out of the queue at once, nothing
waits forever, the waits are counted. A real gateway in front of a real HTTP stand-in
for a GPU server (bench/gpu_standin.py: a FIFO of sequence slots, paced tokens)."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time

import httpx
import pytest

from tests.helpers import free_port, start_process, stop_process, wait_until

MODEL = "gpu"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    port = free_port()
    proc = start_process([sys.executable, "-m", "bench.gpu_standin", "--port", str(port),
                          "--slots", "4", "--tokens", "100", "--interval", "0.05"],
                         f"http://127.0.0.1:{port}/v1/models",
                         tmp_path_factory.mktemp("standin") / "standin.log")
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture(scope="module")
def gw(standin, mongo, tmp_path_factory):
    from tests.inprocess import start_inprocess
    gw = start_inprocess(tmp_path_factory.mktemp("queue"), mongo.uri, {
        "models": [{"name": MODEL, "backend": "openai_compatible", "max_concurrency": 1,
                    "options": {"base_url": standin + "/v1"}}],
        "queue": {"keepalive": 0.2, "max_wait": 3.0, "max_waiting_per_account": 2},
        "tiers": {"free": {}}})
    yield gw
    gw.stop()


def body(stream: bool, tokens: int = 20) -> dict:
    return {"model": MODEL, "stream": stream, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "hi"}]}


def hold(gw, key: str, tokens: int = 20) -> threading.Thread:
    """A streamed request that takes the model's one slot for tokens x 50 ms."""
    def run():
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body(True, tokens),
                          headers={"Authorization": f"Bearer {key}"}, timeout=30) as r:
            for _ in r.iter_lines():
                pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def waiting(gw) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f'ayct_queue_waiting{{model="{MODEL}"'))


def busy(gw) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f'ayct_replica_slots_busy{{model="{MODEL}"'))


def test_a_waiting_stream_gets_keepalive_comments_then_its_tokens(gw):
    holder, waiter = gw.create_key(), gw.create_key()
    t = hold(gw, holder)
    wait_until(lambda: busy(gw) == 1, what="the slot taken")
    lines = []
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body(True),
                      headers={"Authorization": f"Bearer {waiter}"}, timeout=30) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    t.join(30)
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert ": queued" in lines[:first_data]          # told while it waited
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert sum(1 for e in events if e.get("choices")) >= 20
    # the wait is in its usage (metadata only), and in /metrics
    ev = wait_until(lambda: [e for e in gw.usage_events() if e.get("queue_ms")],
                    what="queue_ms")
    assert len(ev) == 1 and ev[0]["queue_ms"] > 100       # the waiter's; not the holder's
    assert "ayct_queue_wait_seconds_count" in httpx.get(gw.url + "/metrics").text


def test_a_websocket_client_is_told_its_position(gw):
    import asyncio

    import websockets

    holder, waiter = gw.create_key(), gw.create_key()
    t = hold(gw, holder)
    wait_until(lambda: busy(gw) == 1, what="the slot taken")

    async def chat():
        url = gw.url.replace("http", "ws") + "/v1/chat/ws"
        async with websockets.connect(url, additional_headers={
                "Authorization": f"Bearer {waiter}"}) as ws:
            await ws.send(json.dumps({"type": "chat", "id": "q1", "body": body(False, 3)}))
            seen = []
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                seen.append(msg)
                if msg["type"] in ("done", "error"):
                    return seen
    seen = asyncio.run(chat())
    t.join(30)
    queued = [m for m in seen if m["type"] == "queued"]
    assert queued and queued[0] == {"type": "queued", "id": "q1", "position": 0}
    assert seen[-1]["type"] == "done"


def test_a_client_that_disconnects_leaves_the_queue_at_once(gw):
    holder, leaver = gw.create_key(), gw.create_key()
    t = hold(gw, holder, tokens=20)
    wait_until(lambda: busy(gw) == 1, what="the slot taken")
    payload = json.dumps(body(True)).encode()
    sock = socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + leaver.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    wait_until(lambda: waiting(gw) == 1, what="the request waiting")
    sock.close()
    wait_until(lambda: waiting(gw) == 0, timeout=5, what="the queue empty after the disconnect")
    assert busy(gw) == 1                  # the holder still runs; nobody else got the slot
    t.join(30)


def test_nothing_waits_forever_and_an_account_cannot_flood_the_queue(gw):
    holder, flooder = gw.create_key(), gw.create_key()
    t = hold(gw, holder, tokens=80)       # 4 s: longer than max_wait (3 s)
    wait_until(lambda: busy(gw) == 1, what="the slot taken")
    results = []

    def ask():
        r = httpx.post(gw.url + "/v1/chat/completions", json=body(False, 2), timeout=30,
                       headers={"Authorization": f"Bearer {flooder}"})
        results.append((r.status_code, r.json()["error"]["code"], r.headers.get("Retry-After")))
    askers = [threading.Thread(target=ask) for _ in range(2)]
    for a in askers:
        a.start()
    wait_until(lambda: waiting(gw) == 2, what="two requests waiting")
    r = httpx.post(gw.url + "/v1/chat/completions", json=body(False, 2), timeout=30,
                   headers={"Authorization": f"Bearer {flooder}"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_waiting"
    assert int(r.headers["Retry-After"]) >= 1
    started = time.monotonic()
    for a in askers:
        a.join(30)
    assert results == [(503, "backend_busy", results[0][2])] * 2
    assert int(results[0][2]) >= 1
    assert time.monotonic() - started < 10
    t.join(30)


def test_two_gateways_share_the_model_slots(standin, mongo, tmp_path):
    """Two gateway processes with one database: together they send the model at most its
    max_concurrency, each taking a share by its demand (no per-request round trip)."""
    from tests.helpers import start_gateway
    sections = {"models": [{"name": MODEL, "backend": "openai_compatible",
                            "max_concurrency": 2, "options": {"base_url": standin + "/v1"}}],
                "queue": {"keepalive": 0.5, "max_wait": 30.0}}
    a = start_gateway(tmp_path / "a", mongo.uri, sections, db_name="shared_slots")
    b = start_gateway(tmp_path / "b", mongo.uri, sections, db_name="shared_slots")
    try:
        key = a.create_key()
        time.sleep(1.0)                               # both have reported once
        threads = [hold(gw, key, tokens=20) for gw in (a, b) for _ in range(3)]
        running = []
        while any(t.is_alive() for t in threads):
            running.append(httpx.get(standin + "/stats", timeout=10).json()["running"])
            time.sleep(0.05)
        for t in threads:
            t.join(30)
        assert max(running) <= 2                      # the model's capacity, not 2 x 2
        assert running.count(2) > len(running) // 3   # and it is used
    finally:
        a.stop()
        b.stop()


def test_light_users_processes_are_given_the_slots_they_are_due(standin, mongo, tmp_path):
    """Shares between processes are fair by account, not by request count: a heavy
    account queues 12 requests on gateway b; then three light accounts ask one request
    each on gateway a. Counted by requests a would hold 1 of the 4 slots (3 of 15
    requests); by account each light user is due a whole slot, so a comes to hold 3 and
    b gives them back as its requests end."""
    import pymongo
    from tests.helpers import start_gateway
    sections = {"models": [{"name": MODEL, "backend": "openai_compatible",
                            "max_concurrency": 4, "options": {"base_url": standin + "/v1"}}],
                "queue": {"keepalive": 0.5, "max_wait": 60.0}}
    a = start_gateway(tmp_path / "a", mongo.uri, sections, db_name="fair_shares")
    b = start_gateway(tmp_path / "b", mongo.uri, sections, db_name="fair_shares")
    doc = pymongo.MongoClient(mongo.uri)["fair_shares"]["capacity_shares"]

    def held(field: str = "slots") -> dict[str, int]:
        holders = (doc.find_one({"_id": MODEL}) or {}).get("holders", {})
        return {name: sum(v.get(field, 0) for h, v in holders.items()
                          if f":{gw.proc.pid}:" in h) for name, gw in (("a", a), ("b", b))}
    try:
        heavy = a.create_key("heavy@example.com")
        light = [a.create_key(f"light{i}@example.com") for i in range(3)]
        time.sleep(1.0)                                # both have reported once
        threads = [hold(b, heavy, tokens=100) for _ in range(12)]
        assert wait_until(lambda: held() == {"a": 0, "b": 4}, timeout=15)
        threads += [hold(a, key, tokens=60) for key in light]
        # while b still has requests waiting (by request count a would hold at most 2)
        assert wait_until(lambda: held() == {"a": 3, "b": 1} and held("demand")["b"] > 4,
                          timeout=20), (held(), held("demand"))
        for t in threads:
            t.join(60)
    finally:
        a.stop()
        b.stop()
