"""The lean path (gateway.http.lean): POST /v1/chat/completions and /v1/completions served
without Tornado's web layer answer as the Tornado handlers do (headers, request ids,
errors), against an in-process gateway (tests.inprocess) with the echo backend."""
import json
import logging

import httpx
import pytest

from gateway.http import lean as leanhttp
from gateway.handlers import openai

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}]}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hello lean"}]}


@pytest.fixture(scope="module")
def lean_gw(mongo, tmp_path_factory):
    from tests.inprocess import keyed_inprocess
    with keyed_inprocess(tmp_path_factory, mongo.uri, ECHO, "lean") as gw:
        yield gw


@pytest.fixture
def lean_requests(monkeypatch):
    """Counts the requests the lean path serves."""
    served = []
    start = leanhttp.LeanHandler.start

    def counting(self):
        served.append(type(self).__name__)
        return start(self)
    monkeypatch.setattr(leanhttp.LeanHandler, "start", counting)
    return served


def auth(gw, **extra):
    return {"Authorization": f"Bearer {gw.key}", **extra}


def test_streams_on_the_lean_path_with_the_api_headers(lean_gw, lean_requests):
    with httpx.stream("POST", lean_gw.url + "/v1/chat/completions", timeout=30,
                      headers=auth(lean_gw), json={**BODY, "stream": True}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lean_requests == ["LeanChatCompletions"]
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "date" in r.headers and "server" not in r.headers
    rid = r.headers["x-request-id"]
    assert rid.startswith("chatcmpl-")
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["id"] == rid and first["model"] == "echo"


def test_json_answer_keeps_the_clients_request_id(lean_gw, lean_requests):
    r = httpx.post(lean_gw.url + "/v1/completions?ignored=1", timeout=30,
                   headers=auth(lean_gw, **{"X-Request-Id": "client-id.1"}),
                   json={"model": "echo", "prompt": "hello lean"})
    assert r.status_code == 200, r.text
    assert lean_requests == ["LeanCompletions"]
    assert r.headers["x-request-id"] == "client-id.1"
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")


def test_errors_are_the_api_json_with_their_status(lean_gw, lean_requests):
    r = httpx.post(lean_gw.url + "/v1/chat/completions", json=BODY, timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["x-request-id"].startswith("req_")
    r = httpx.post(lean_gw.url + "/v1/chat/completions", content=b"{nope", timeout=30,
                   headers=auth(lean_gw))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert lean_requests == ["LeanChatCompletions"] * 2


def test_other_methods_stay_on_the_tornado_application(lean_gw, lean_requests):
    r = httpx.get(lean_gw.url + "/v1/chat/completions", headers=auth(lean_gw), timeout=30)
    assert r.status_code == 405
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert lean_requests == []


def test_an_unexpected_exception_is_a_500_without_a_trace(lean_gw, lean_requests,
                                                          monkeypatch, caplog):
    async def broken(self):
        raise RuntimeError("secret detail")
    monkeypatch.setattr(openai.LeanChatCompletions, "serve", broken)
    with caplog.at_level(logging.ERROR, logger="allyoucantoken.http"):
        r = httpx.post(lean_gw.url + "/v1/chat/completions", json=BODY, timeout=30,
                       headers=auth(lean_gw))
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert "secret detail" not in r.text and "Traceback" not in r.text
    assert any("unhandled RuntimeError on POST /v1/chat/completions" in rec.getMessage()
               for rec in caplog.records)
    assert "secret detail" not in caplog.text


def test_keep_alive_connection_serves_requests_in_turn(lean_gw, lean_requests):
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            r = client.post(lean_gw.url + "/v1/chat/completions", headers=auth(lean_gw),
                            json={**BODY, "stream": True})
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        r = client.get(lean_gw.url + "/v1/models", headers=auth(lean_gw))
        assert r.status_code == 200
    assert lean_requests == ["LeanChatCompletions"] * 3
