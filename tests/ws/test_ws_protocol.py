"""The WebSocket chat protocol against a real gateway process (echo/counting test backends)."""
import asyncio
import json
import signal
import time

import httpx

from tests.ws.client import HELLO, Client, assert_error, run, text_of
from tests.ws.conftest import usage_events

async def still_usable(c: Client):
    await c.send({"type": "ping", "id": "p"})
    assert await c.next_for("p") == {"type": "pong", "id": "p"}


def test_full_session(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        assert c.ready["authenticated"] is True and c.ready["max_in_flight"] == 3
        await still_usable(c)
        msgs = await c.chat("r1", HELLO)
        start, *deltas, done = msgs
        assert start["type"] == "start" and start["request_id"].startswith("chatcmpl-")
        assert start["model"] == "echo"
        assert [m["type"] for m in deltas] == ["delta"] * 4
        assert text_of(msgs) == "hello brave new world "
        assert done == {"type": "done", "id": "r1", "request_id": start["request_id"],
                        "finish_reason": "stop",
                        "usage": {"prompt_tokens": 4, "completion_tokens": 4,
                                  "total_tokens": 8, "estimated": False}}
        # An integer id works too, and max_tokens is honoured.
        msgs = await c.chat(7, {**HELLO, "max_tokens": 2})
        assert text_of(msgs) == "hello brave " and msgs[-1]["finish_reason"] == "length"
        c.close()
    run(go())
    metrics = httpx.get(ws_gw.url + "/metrics", timeout=30).text
    assert 'ayct_requests_total{model="echo",route="/v1/chat/ws",status="200"}' in metrics
    assert 'ayct_active_streams{transport="ws"}' in metrics


def test_several_requests_in_flight_interleave(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        words = {f"q{i}": " ".join(f"w{i}x{j}" for j in range(6)) for i in range(3)}
        for rid, text in words.items():
            await c.send({"type": "chat", "id": rid, "body": {
                "model": "slow-echo", "messages": [{"role": "user", "content": text}]}})
        order, finals = [], set()
        while len(finals) < 3:
            msg = await c.recv()
            order.append((msg["type"], msg["id"]))
            if msg["type"] == "done":
                finals.add(msg["id"])
            c.pending[msg["id"]].append(msg)
        for rid, text in words.items():
            assert text_of(c.pending[rid]) == text + " "
            assert c.pending[rid][-1]["usage"]["completion_tokens"] == 6
        # Deltas of all three arrived before the first of them was done.
        first_done = order.index(next(o for o in order if o[0] == "done"))
        assert {rid for t, rid in order[:first_done] if t == "delta"} == set(words)
        c.close()
    run(go())


def read_state(gw, marker):
    path = gw.state_dir / f"{marker}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_cancel_by_id_stops_the_backend_and_keeps_the_socket(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        body = {"model": "counter", "user": "cancel1",
                "messages": [{"role": "user", "content": "count"}]}
        await c.send({"type": "chat", "id": "long", "body": body})
        await c.send({"type": "chat", "id": "short", "body": HELLO})
        seen = 0
        while seen < 30:
            msg = await c.next_for("long")
            seen += msg["type"] == "delta"
        await c.send({"type": "cancel", "id": "long"})
        rest = await c.until_final("long")
        cancelled = rest[-1]
        assert cancelled["type"] == "cancelled"
        assert cancelled["usage"]["completion_tokens"] >= seen
        # The backend's own report: closed early, far from its million tokens.
        state = read_state(ws_gw, "cancel1")
        assert state["closed"] is True and state["finished"] is False
        assert state["produced"] < 10_000
        # The other request on the same socket was not disturbed; the socket still works.
        assert text_of(await c.until_final("short")) == "hello brave new world "
        await still_usable(c)
        # Cancelling what is not in flight is an error message, not a crash.
        await c.send({"type": "cancel", "id": "long"})
        assert_error(await c.next_for("long"), 404, "request_not_found", "long", "id")
        await asyncio.sleep(0.3)
        assert read_state(ws_gw, "cancel1") == state   # nothing ran after the close
        c.close()
    run(go())


def test_closing_the_socket_stops_its_generations(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        await c.send({"type": "chat", "id": 1, "body": {
            "model": "counter", "user": "disconnect1",
            "messages": [{"role": "user", "content": "count"}]}})
        while (await c.next_for(1))["type"] != "delta":
            pass
        c.close()
        for _ in range(200):
            state = read_state(ws_gw, "disconnect1")
            if state and state["closed"]:
                break
            await asyncio.sleep(0.05)
        assert state["closed"] is True and state["finished"] is False
    run(go())


def test_bad_messages_get_error_messages_and_the_socket_stays_usable(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        await c.send('{"type": "chat", "id": ')
        assert_error(await c.recv(), 400, "invalid_json")
        await c.send("[" * 2000 + "]" * 2000)   # deep nesting: an error, not a crash
        msg = await c.recv()
        assert_error(msg, 400, msg["error"]["code"])
        assert msg["error"]["code"] in ("invalid_json", "invalid_message")
        await c.send("[1, 2]")
        assert_error(await c.recv(), 400, "invalid_message")
        await c.send({"type": "frobnicate", "id": "x"})
        assert_error(await c.recv(), 400, "unknown_message_type", "x", "type")
        await c.send({"type": "chat", "body": HELLO})
        assert_error(await c.recv(), 400, "invalid_id", None, "id")
        await c.send({"type": "chat", "id": True, "body": HELLO})
        assert_error(await c.recv(), 400, "invalid_id", None, "id")
        await c.send({"type": "chat", "id": "nobody"})
        assert_error(await c.recv(), 400, "invalid_message", "nobody", "body")
        await c.conn.write_message(b'{"type": "ping"}', binary=True)
        assert_error(await c.recv(), 400, "invalid_message")
        # Body validation: the same errors as the HTTP API.
        msgs = await c.chat("v1", {**HELLO, "temperature": 7})
        assert_error(msgs[-1], 400, "invalid_value", "v1", "temperature")
        msgs = await c.chat("v2", {"model": "echo"})
        assert_error(msgs[-1], 400, "missing_required_parameter", "v2", "messages")
        msgs = await c.chat("v3", {**HELLO, "model": "gpt-17"})
        assert_error(msgs[-1], 404, "model_not_found", "v3", "model")
        # After all that, a normal request still works.
        assert text_of(await c.chat("ok", HELLO)) == "hello brave new world "
        c.close()
    run(go())


def test_oversized_messages(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        assert c.ready["max_message_bytes"] == 4096
        big = {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]}
        await c.send({"type": "chat", "id": "big", "body": big})
        assert_error(await c.recv(), 413, "message_too_large")
        assert text_of(await c.chat("ok", HELLO)) == "hello brave new world "
        # Far beyond the cap (over 4x), the gateway stops reading and closes (1009).
        await c.send({"type": "chat", "id": "huge", "body": {
            **HELLO, "messages": [{"role": "user", "content": "x" * 20_000}]}})
        assert await c.recv() is None
        assert c.conn.close_code == 1009
    run(go())


def test_too_many_in_flight_and_duplicate_ids(ws_gw):
    async def go():
        c = await Client.connect(ws_gw, ws_gw.key)
        body = {"model": "counter", "messages": [{"role": "user", "content": "count"}]}
        for i in range(3):
            await c.send({"type": "chat", "id": i, "body": body})
        for i in range(3):
            assert (await c.next_for(i))["type"] == "start"
        await c.send({"type": "chat", "id": 1, "body": body})
        # The error carries no id: messages tagged 1 still belong to the running request 1.
        assert_error(await c.next_for(None), 400, "duplicate_id", None, "id")
        await c.send({"type": "chat", "id": 3, "body": body})
        assert_error(await c.next_for(3), 429, "too_many_in_flight", 3)
        await c.send({"type": "cancel", "id": 0})
        assert (await c.until_final(0))[-1]["type"] == "cancelled"
        msgs = await c.chat(3, HELLO)   # a slot is free again
        assert msgs[-1]["type"] == "done"
        c.close()
    run(go())


def test_tier_limits_apply_with_the_same_codes_as_sse(ws_gw):
    import httpx
    key = ws_gw.create_key("tiny-ws@example.com", tier="tiny")

    async def go():
        c = await Client.connect(ws_gw, key)
        results = [(await c.chat(i, HELLO))[-1] for i in range(3)]
        c.close()
        return results
    results = run(go())
    assert [r["type"] for r in results] == ["done", "done", "error"]
    sse = httpx.post(ws_gw.url + "/v1/chat/completions", json=HELLO, timeout=30,
                     headers={"Authorization": f"Bearer {key}"})
    assert sse.status_code == results[2]["status"] == 429
    assert sse.json()["error"] == results[2]["error"] | {"message": sse.json()["error"]["message"]}


def test_usage_is_recorded_without_content(ws_gw):
    secret = "zebracorn quantumfig"
    email = "ws-usage@example.com"
    key = ws_gw.create_key(email)

    async def go():
        c = await Client.connect(ws_gw, key)
        msgs = await c.chat("u1", {"model": "echo", "messages": [
            {"role": "user", "content": secret}]})
        c.close()
        return msgs
    msgs = run(go())
    assert text_of(msgs) == secret + " "
    deadline = time.monotonic() + 30
    while not (events := usage_events(ws_gw, email)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(events) == 1
    ev = events[0]
    assert ev["transport"] == "ws" and ev["model"] == "echo" and ev["status"] == 200
    assert ev["completion_tokens"] == 2 and ev["request_id"] == msgs[0]["request_id"]
    for word in secret.split():
        assert word not in repr(events)
        assert word not in ws_gw.log()


def test_shutdown_says_goodbye_and_records_the_cut_off_request(mongo, tmp_path):
    """SIGTERM: a request still running when the drain ends (drain_timeout) is cut off
    (recorded as 499); the socket gets an error message and close code 1001."""
    from tests.helpers import start_gateway
    from tests.ws.conftest import ws_sections

    state = tmp_path / "state"
    state.mkdir()
    gw = start_gateway(tmp_path, mongo.uri, {**ws_sections(state),
                                             "server": {"drain_timeout": 0.5}})
    key = gw.create_key("bye@example.com")

    async def main():
        client = await Client.connect(gw, key)
        await client.send({"type": "chat", "id": "long", "body": {
            "model": "slow-echo", "messages": [{"role": "user", "content": "w " * 400}]}})
        while True:
            msg = await client.recv()
            if msg["type"] == "delta":
                break
        gw.proc.send_signal(signal.SIGTERM)
        messages = []
        while (msg := await client.recv(timeout=20)) is not None:
            messages.append(msg)
        return messages, client.conn.close_code

    messages, code = asyncio.run(main())
    assert code == 1001
    goodbye = [m for m in messages if m["type"] == "error" and m["id"] is None]
    assert goodbye and goodbye[0]["error"]["code"] == "server_shutdown"
    assert gw.proc.wait(20) == 0
    events = usage_events(gw, "bye@example.com")
    assert [e["status"] for e in events] == [499]
