"""WebSocket auth (header, auth message, session cookie), the Origin check, the idle and
auth timeouts and protocol pings, against real gateways (in-process: tests.inprocess)."""
import asyncio
import time

import httpx
import pytest
import tornado.httpclient

from tests.helpers import db_run
from tests.inprocess import start_inprocess
from tests.ws.client import HELLO, Client, assert_error, run, text_of
from tests.ws.conftest import account_id, start_ws_gw, ws_sections
from tests.ws.rawsocket import RawSocket

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture(scope="module")
def ws_gw(mongo, tmp_path_factory):
    """The WebSocket test gateway (tests.ws.conftest), in-process."""
    gw = start_ws_gw(start_inprocess, tmp_path_factory.mktemp("ws"), mongo.uri)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def timer_gw(mongo, tmp_path_factory):
    """A gateway with short WebSocket timers (in-process)."""
    tmp = tmp_path_factory.mktemp("wstimers")
    (tmp / "state").mkdir()
    gw = start_inprocess(tmp, mongo.uri, ws_sections(
        tmp / "state", idle_timeout=3.0, auth_timeout=1.0, ping_interval=0.3))
    gw.key = gw.create_key("timers@example.com")
    yield gw
    gw.stop()


def handshake(gw, headers):
    """The upgrade request as a plain HTTP client sees it (to read refusal bodies)."""
    return httpx.get(gw.url + "/v1/chat/ws", headers={**UPGRADE, **headers}, timeout=30)


def refused(resp, status, code):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    assert "Traceback" not in resp.text


def test_bad_keys_are_refused_before_the_upgrade(ws_gw):
    refused(handshake(ws_gw, {"Authorization": "Bearer ayct_" + "A" * 43}), 401,
            "invalid_api_key")
    refused(handshake(ws_gw, {"Authorization": "Basic abc"}), 401, "invalid_api_key")

    async def go():
        with pytest.raises(tornado.httpclient.HTTPClientError) as exc:
            await Client.connect(ws_gw, "ayct_" + "B" * 43)
        assert exc.value.code == 401
    run(go())


def test_plain_http_gets_a_json_error(ws_gw):
    resp = httpx.get(ws_gw.url + "/v1/chat/ws", timeout=30)
    refused(resp, 400, "websocket_upgrade_required")
    refused(httpx.post(ws_gw.url + "/v1/chat/ws", timeout=30), 400,
            "websocket_upgrade_required")


def test_origin_check(ws_gw):
    auth = {"Authorization": f"Bearer {ws_gw.key}"}
    refused(handshake(ws_gw, {**auth, "Origin": "http://evil.example"}), 403,
            "origin_not_allowed")
    refused(handshake(ws_gw, {**auth, "Origin": "https://app.example.com.evil.example"}), 403,
            "origin_not_allowed")
    host = ws_gw.url.split("//")[1]

    async def go(origin):
        c = await Client.connect(ws_gw, ws_gw.key, headers={"Origin": origin})
        assert text_of(await c.chat(1, HELLO)) == "hello brave new world "
        c.close()
    run(go(f"http://{host}"))              # same host
    run(go("https://app.example.com"))     # configured in websocket.allowed_origins


def test_session_cookie_needs_an_allowed_origin(ws_gw):
    aid = account_id(ws_gw, ws_gw.email)

    async def new_session(store):
        token, _ = await store.sessions.create(aid, idle=3600, absolute=7200)
        return token
    cookie = {"Cookie": f"ayct_session={db_run(ws_gw.db_uri, ws_gw.db_name, new_session)}"}
    host = ws_gw.url.split("//")[1]
    # No Origin (not a browser page) or a foreign one: the ambient cookie is not accepted.
    refused(handshake(ws_gw, cookie), 403, "origin_not_allowed")
    refused(handshake(ws_gw, {**cookie, "Origin": "http://evil.example"}), 403,
            "origin_not_allowed")

    async def go():
        c = await Client.connect(ws_gw, headers={**cookie, "Origin": f"http://{host}"})
        assert c.ready["authenticated"] is True
        assert text_of(await c.chat("s", HELLO)) == "hello brave new world "
        # Signing out (the session is deleted) reaches the open socket.
        await asyncio.to_thread(db_run, ws_gw.db_uri, ws_gw.db_name,
                                lambda store: store.sessions.delete_for_account(aid))
        assert_error((await c.chat("t", HELLO))[-1], 401, "session_expired", "t")
        c.close()
        # A made-up cookie authenticates nobody.
        c = await Client.connect(ws_gw, headers={"Cookie": "ayct_session=forged",
                                                 "Origin": f"http://{host}"})
        assert c.ready["authenticated"] is False
        assert_error((await c.chat("s", HELLO))[-1], 401, "missing_api_key", "s")
        c.close()
    run(go())


def test_auth_message_for_clients_without_headers(timer_gw):
    async def go():
        c = await Client.connect(timer_gw)
        assert c.ready["authenticated"] is False
        assert_error((await c.chat(1, HELLO))[-1], 401, "missing_api_key", 1)
        await c.send({"type": "auth", "api_key": timer_gw.key})
        assert await c.recv() == {"type": "authenticated"}
        await c.send({"type": "auth", "api_key": timer_gw.key})
        assert_error(await c.recv(), 400, "already_authenticated")
        assert text_of(await c.chat(2, HELLO)) == "hello brave new world "
        c.close()

        c = await Client.connect(timer_gw)
        await c.send({"type": "auth", "api_key": "ayct_" + "C" * 43})
        assert_error(await c.recv(), 401, "invalid_api_key")
        assert await c.recv() is None and c.conn.close_code == 4401
    run(go())


def test_unauthenticated_sockets_are_closed_after_the_auth_timeout(timer_gw):
    async def go():
        c = await Client.connect(timer_gw)
        assert_error(await c.recv(), 401, "auth_timeout")
        assert await c.recv() is None and c.conn.close_code == 4401
    run(go())


def test_idle_timeout_closes_but_running_requests_keep_the_socket(timer_gw):
    async def go():
        c = await Client.connect(timer_gw, timer_gw.key)
        # 80 words at 0.05 s each run longer than the 3 s idle timeout: not idle meanwhile.
        words = " ".join(f"w{i}" for i in range(80))
        msgs = await c.chat("long", {"model": "slow-echo",
                                     "messages": [{"role": "user", "content": words}]})
        assert msgs[-1]["type"] == "done" and text_of(msgs) == words + " "
        # Then nothing happens: the gateway says why and closes.
        msg = await c.recv()
        assert msg["type"] == "error" and msg["error"]["code"] == "idle_timeout"
        assert await c.recv() is None and c.conn.close_code == 4408
    run(go())


def test_protocol_pings_drop_clients_that_never_answer(timer_gw):
    raw = RawSocket(timer_gw, {"Authorization": f"Bearer {timer_gw.key}"})
    assert raw.status == 101
    frames = []
    try:
        while True:
            frames.append(raw.read_frame())
            if frames[-1][0] == 0x8:
                break
    except ConnectionError:
        pass
    raw.close()
    opcodes = [op for op, _ in frames]
    assert opcodes[0] == 0x1                     # the ready message
    assert 0x9 in opcodes                        # a ping it never answered
    assert frames[-1][0] == 0x8 and b"ping timed out" in frames[-1][1]


def test_revoked_key_is_refused_on_an_open_socket(ws_gw):
    key = ws_gw.create_key("revoke-ws@example.com")

    async def go():
        c = await Client.connect(ws_gw, key)
        assert (await c.chat("a", HELLO))[-1]["type"] == "done"
        aid = await asyncio.to_thread(account_id, ws_gw, "revoke-ws@example.com")
        await asyncio.to_thread(db_run, ws_gw.db_uri, ws_gw.db_name,
                                lambda store: store.keys.revoke_all(aid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            last = (await c.chat("b", HELLO))[-1]
            if last["type"] == "error":
                break
            await asyncio.sleep(0.2)
        assert_error(last, 401, "invalid_api_key", "b")
        c.close()
    run(go())
