"""The lean path and the Tornado handlers answer the same requests the same way.

``POST /v1/chat/completions`` and ``/v1/completions`` take the lean path
(:mod:`gateway.http.lean`); the same routes are served by the Tornado application's
handlers (:class:`gateway.handlers.openai.GenerationHandler`) when the request guard has
no lean router, which is how these tests force it (``RequestGuard.lean = None`` on a
running gateway). Each request is sent both ways, over real HTTP/1.1 on loopback, to one
in-process gateway with the deterministic echo backend; status line, headers (names,
values and repeats, in any order; the values of ``Date`` and of a generated
``X-Request-Id`` excepted) and body must be the same. Ids and timestamps in bodies are
compared by shape (the body's ``id`` is the ``X-Request-Id``), then blanked.
"""
from __future__ import annotations

import http.client
import json
import re
import urllib.parse

import pytest

from gateway.http import lean as leanhttp
from gateway.handlers import openai

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}]}
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello parity test"}]}
TEXT = {"model": "echo", "prompt": "hello parity"}


@pytest.fixture(scope="module")
def gw(mongo, tmp_path_factory):
    from tests.inprocess import keyed_inprocess
    with keyed_inprocess(tmp_path_factory, mongo.uri, ECHO, "parity") as gw:
        yield gw


@pytest.fixture
def served(monkeypatch):
    """Which path served each request: 'lean' or 'tornado'."""
    seen: list[str] = []
    start, post = leanhttp.LeanHandler.start, openai.GenerationHandler.post

    def lean_start(self):
        seen.append("lean")
        return start(self)

    async def tornado_post(self):
        seen.append("tornado")
        return await post(self)
    monkeypatch.setattr(leanhttp.LeanHandler, "start", lean_start)
    monkeypatch.setattr(openai.GenerationHandler, "post", tornado_post)
    return seen


def send(gw, path: str, body: bytes, headers: dict, tornado: bool) -> dict:
    """One request over a new HTTP/1.1 connection, through the lean path or (``tornado``)
    the Tornado application; the response as sent (names' case and repeats kept)."""
    guard = gw.server.request_callback
    router = guard.lean
    assert router is not None, "the gateway has no lean router to compare with"
    if tornado:
        guard.lean = None
    try:
        url = urllib.parse.urlsplit(gw.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
    finally:
        guard.lean = router
    return {"status": (r.status, r.reason), "headers": r.getheaders(), "body": data}


def normalised(response: dict, client_id: str | None) -> dict:
    """The response with what legitimately differs blanked: the ``Date`` value, a
    generated ``X-Request-Id`` (its shape, and its match with the body's ``id``, checked
    first), and ids and ``created`` in the body. Whether each header is there at all is
    kept (the guard's own answers have neither)."""
    headers = response["headers"]
    rids = [v for k, v in headers if k.lower() == "x-request-id"]
    assert len(rids) <= 1, headers
    rid = rids[0] if rids else None
    if rid is not None and client_id is None:
        assert re.fullmatch(r"(req_[0-9a-f]{24}|(chatcmpl|cmpl)-[0-9a-f]+)", rid), rid
    elif rid is not None:
        assert rid == client_id

    def blank(name: str, value: str) -> str:
        if name.lower() == "date" or (name.lower() == "x-request-id" and client_id is None):
            return "<varies>"
        return value
    kept = sorted((k, blank(k, v)) for k, v in headers)
    body = response["body"]
    kind = dict((k.lower(), v) for k, v in headers).get("content-type", "")
    if kind.startswith("text/event-stream"):
        events = []
        for block in body.decode().split("\n\n"):
            if not block:
                continue
            assert block.startswith("data: "), block
            payload = block[6:]
            if payload == "[DONE]":
                events.append(payload)
                continue
            event = json.loads(payload)
            if "id" in event:
                assert event["id"] == rid or client_id is not None, (event, rid)
                event["id"], event["created"] = "ID", 0
            events.append(event)
        body = events
    elif body:
        body = json.loads(body)
        if "id" in body:
            assert client_id is not None or body["id"] == rid, (body, rid)
            body["id"], body["created"] = "ID", 0
    return {"status": response["status"], "headers": kept, "body": body}


def both_ways(gw, served, path: str, body: bytes, headers: dict,
              expect_handler: bool = True) -> tuple[dict, dict]:
    client_id = headers.get("X-Request-Id")
    lean = send(gw, path, body, headers, tornado=False)
    tornado = send(gw, path, body, headers, tornado=True)
    # Each path was really taken (the guard answers 413 before either handler).
    assert served == (["lean", "tornado"] if expect_handler else []), served
    served.clear()
    return normalised(lean, client_id), normalised(tornado, client_id)


def auth(gw, **extra) -> dict:
    return {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json",
            **extra}


SUCCESS = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", TEXT),
    ("/v1/chat/completions", {**CHAT, "stream": True}),
    ("/v1/completions", {**TEXT, "stream": True}),
    ("/v1/chat/completions", {**CHAT, "stream": True,
                              "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 2}),   # finish_reason "length"
]


@pytest.mark.parametrize("path, body", SUCCESS,
                         ids=["chat", "text", "chat-sse", "text-sse", "chat-sse-usage",
                              "chat-length"])
def test_success_is_the_same_both_ways(gw, served, path, body):
    lean, tornado = both_ways(gw, served, path, json.dumps(body).encode(), auth(gw))
    assert lean["status"] == (200, "OK")
    assert lean == tornado
    names = {k for k, _ in lean["headers"]}
    if body.get("stream"):
        assert ("Transfer-Encoding", "chunked") in lean["headers"]
        assert lean["body"][-1] == "[DONE]" and len(lean["body"]) >= 3
    else:
        assert "Content-Length" in names and lean["body"]["usage"]["completion_tokens"]


def test_a_clients_request_id_is_kept_both_ways(gw, served):
    lean, tornado = both_ways(gw, served, "/v1/chat/completions", json.dumps(CHAT).encode(),
                              auth(gw, **{"X-Request-Id": "parity.client-1"}))
    assert ("X-Request-Id", "parity.client-1") in lean["headers"]
    assert lean == tornado


ERRORS = [
    ("bad-json", "/v1/chat/completions", b"{not json", True, 400, "invalid_json"),
    ("no-key", "/v1/chat/completions", json.dumps(CHAT).encode(), False, 401,
     "missing_api_key"),
    ("unknown-model", "/v1/completions", json.dumps({**TEXT, "model": "nope"}).encode(),
     True, 404, "model_not_found"),
    ("backend-fails", "/v1/chat/completions",
     json.dumps({**CHAT, "messages": [{"role": "user", "content": "a FAIL"}]}).encode(),
     True, None, None),
]


@pytest.mark.parametrize("path, body, keyed, status, code",
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_the_same_both_ways(gw, served, path, body, keyed, status, code):
    headers = auth(gw) if keyed else {"Content-Type": "application/json"}
    lean, tornado = both_ways(gw, served, path, body, headers)
    assert lean == tornado
    if status is not None:
        assert lean["status"][0] == status
        assert lean["body"]["error"]["code"] == code
    else:
        assert lean["status"][0] >= 500 and set(lean["body"]["error"]) == \
            {"message", "type", "param", "code"}


def test_a_mid_stream_backend_failure_is_the_same_both_ways(gw, served):
    body = {**CHAT, "stream": True,
            "messages": [{"role": "user", "content": "one two FAIL"}]}
    lean, tornado = both_ways(gw, served, "/v1/chat/completions", json.dumps(body).encode(),
                              auth(gw))
    assert lean == tornado
    assert lean["status"] == (200, "OK") and "error" in lean["body"][-1]


def test_a_body_over_the_limit_is_413_both_ways(gw, served):
    limit = gw.config.server.max_body_bytes
    lean, tornado = both_ways(gw, served, "/v1/chat/completions", b"x" * (limit + 1),
                              auth(gw), expect_handler=False)
    assert lean == tornado
    assert lean["status"][0] == 413 and lean["body"]["error"]["code"] == "request_too_large"
