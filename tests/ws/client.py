"""A small real WebSocket client for the tests (tornado.websocket.websocket_connect),
with per-request-id demultiplexing of server messages."""
from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import tornado.httpclient
import tornado.websocket

FINAL = ("done", "error", "cancelled")

HELLO = {"model": "echo", "messages": [{"role": "user", "content": "hello brave new world"}]}


def assert_error(msg, status, code, req_id=None, param=None):
    assert msg["type"] == "error", msg
    assert msg["id"] == req_id
    assert msg["status"] == status
    assert set(msg["error"]) == {"message", "type", "param", "code"}
    assert msg["error"]["code"] == code, msg
    assert msg["error"]["message"] and "Traceback" not in msg["error"]["message"]
    if param is not None:
        assert msg["error"]["param"] == param


def ws_url(gw) -> str:
    return gw.url.replace("http://", "ws://", 1) + "/v1/chat/ws"


class Client:
    """One socket; ``recv()`` returns the next message (None once closed)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.pending: dict[object, list[dict]] = defaultdict(list)
        self.other: list[dict] = []

    @classmethod
    async def connect(cls, gw, key: str | None = None, headers: dict | None = None,
                      max_message_size: int = 64 << 20) -> "Client":
        headers = dict(headers or {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = tornado.httpclient.HTTPRequest(ws_url(gw), headers=headers,
                                                 connect_timeout=10, request_timeout=30)
        conn = await tornado.websocket.websocket_connect(request,
                                                         max_message_size=max_message_size)
        client = cls(conn)
        ready = await client.recv()
        assert ready["type"] == "ready", ready
        client.ready = ready
        return client

    async def send(self, msg) -> None:
        await self.conn.write_message(msg if isinstance(msg, str) else json.dumps(msg))

    async def recv(self, timeout: float = 60) -> dict | None:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        return None if raw is None else json.loads(raw)

    async def next_for(self, req_id, timeout: float = 60) -> dict | None:
        """The next message tagged ``req_id``; messages for other ids are kept for later."""
        while not self.pending[req_id]:
            msg = await self.recv(timeout)
            if msg is None:
                return None
            self.pending[msg.get("id")].append(msg)
        return self.pending[req_id].pop(0)

    async def until_final(self, req_id, timeout: float = 60) -> list[dict]:
        """All messages for ``req_id`` up to and including done/error/cancelled."""
        out = []
        while True:
            msg = await self.next_for(req_id, timeout)
            assert msg is not None, f"socket closed before {req_id!r} finished: {out}"
            out.append(msg)
            if msg["type"] in FINAL:
                return out

    async def chat(self, req_id, body: dict) -> list[dict]:
        await self.send({"type": "chat", "id": req_id, "body": body})
        return await self.until_final(req_id)

    def close(self) -> None:
        self.conn.close()


def text_of(messages: list[dict]) -> str:
    return "".join(m["content"] for m in messages if m["type"] == "delta")


def run(coro):
    """Run one test coroutine on a fresh event loop."""
    return asyncio.run(coro)
