"""The shared request pipeline (gateway.relay.pipeline) and error renderer (gateway.errors),
unit by unit: what every transport relies on, without a gateway process."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.web

from gateway import sdk
from gateway.errors import APIError, ErrorRenderer, error_message
from gateway.relay.pipeline import RequestPipeline


class _Backend:
    max_n = 1


class _Usage:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def record(self, event: dict) -> None:
        self.events.append(event)


class _Gateway:
    """What the pipeline reads of a gateway: limiters, backends, model config, usage."""

    def __init__(self, *limiters) -> None:
        self.limiters = list(limiters)
        self.backends = {"m": _Backend()}
        self.config = SimpleNamespace(model=lambda name: None)
        self.usage = _Usage()

    def backend_for(self, model: str):
        if model not in self.backends:
            raise APIError(404, "no such model", param="model", code="model_not_found")
        return self.backends[model]


class _Allow(sdk.Limiter):
    name = "allow"

    async def admit(self, principal, request):
        return self.allow(headers={"x-ratelimit-limit-requests": "10"}, max_tokens=7)


class _TooLong(sdk.Limiter):
    name = "too_long"

    async def admit(self, principal, request):
        return self.deny("max_tokens_too_large", "max_tokens is too large.", 400,
                         param="max_tokens")


PRINCIPAL = sdk.Principal("acct", "free", key_id="k1")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def test_http_body_is_validated_built_and_admitted():
    gw = _Gateway(_Allow())
    pipeline = RequestPipeline(gw, "chat")
    gen = asyncio.run(pipeline.start(PRINCIPAL, json.dumps({**CHAT, "stream": True}).encode()))
    assert gen.transport == "sse" and gen.req.request_id.startswith("chatcmpl-")
    assert gen.req.max_tokens == 7                              # a limiter's clamp
    assert gen.headers == {"x-ratelimit-limit-requests": "10"}
    assert pipeline.model == "m" and gw.usage.events == []     # recorded when it runs

    gen = asyncio.run(RequestPipeline(gw, "completion").start(
        PRINCIPAL, json.dumps({"model": "m", "prompt": "hi"}).encode()))
    assert gen.transport == "http" and gen.req.request_id.startswith("cmpl-")


def test_websocket_object_goes_the_same_way():
    gen = asyncio.run(RequestPipeline(_Gateway(_Allow()), "chat", "ws").start(
        PRINCIPAL, dict(CHAT), 100))
    assert gen.transport == "ws" and gen.req.kind == "chat" and gen.req.max_tokens == 7


def test_a_denial_is_recorded_and_raised_with_its_param():
    gw = _Gateway(_Allow(), _TooLong())
    pipeline = RequestPipeline(gw, "chat", "ws")
    with pytest.raises(APIError) as exc:
        asyncio.run(pipeline.start(PRINCIPAL, dict(CHAT), 100))
    assert (exc.value.status, exc.value.param, exc.value.code) == \
        (400, "max_tokens", "max_tokens_too_large")
    (event,) = gw.usage.events
    assert (event["status"], event["error_code"], event["transport"], event["key_id"]) == \
        (400, "max_tokens_too_large", "ws", "k1")
    assert pipeline.gen is not None and pipeline.gen.usage.total_tokens == 0


def test_refusals_before_admission_are_recorded_without_a_model_it_does_not_serve():
    """Error rates are usage data: a 404 or 400 of a known key counts (issue 22)."""
    gw = _Gateway(_Allow())
    pipeline = RequestPipeline(gw, "chat")
    with pytest.raises(APIError) as exc:                          # unknown model: 404
        asyncio.run(pipeline.start(PRINCIPAL, json.dumps({**CHAT, "model": "x"}).encode()))
    assert exc.value.status == 404 and pipeline.model == "x"      # named, for the metrics
    pipeline = RequestPipeline(gw, "chat")
    with pytest.raises(APIError) as exc:                          # invalid body: 400
        asyncio.run(pipeline.start(PRINCIPAL, b'{"model": "m", "messages": 3}'))
    assert exc.value.status == 400 and pipeline.model is None
    assert [(e["status"], e["model"], e["key_id"], e["prompt_tokens"])
            for e in gw.usage.events] == [(404, "-", "k1", 0), (400, "-", "k1", 0)]


class _Raises(ErrorRenderer, tornado.web.RequestHandler):
    def get(self, what: str) -> None:
        if what == "api":
            raise APIError(429, "Slow down.", code="rate_limit", headers={"Retry-After": "3"})
        if what == "http":
            raise tornado.web.HTTPError(405, "Not here.")
        raise RuntimeError("secret detail")


class _Html(_Raises):
    def render_error(self, err, exc=None) -> None:
        self.set_header("Content-Type", "text/html")
        self.finish(f"<p>{err.status}: {err.message}</p>")


def _fetch_all(app: tornado.web.Application, paths: list[str]):
    async def go():
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets([sock])
        client = tornado.httpclient.AsyncHTTPClient()
        try:
            return [await client.fetch(f"http://127.0.0.1:{port}{p}", raise_error=False)
                    for p in paths]
        finally:
            server.stop()
    return asyncio.run(go())


def test_error_renderer_answers_json_with_status_and_headers_never_a_trace():
    api, http, boom = _fetch_all(tornado.web.Application([(r"/(\w+)", _Raises)]),
                                 ["/api", "/http", "/boom"])
    assert api.code == 429 and api.headers["Retry-After"] == "3"
    assert json.loads(api.body) == {"error": {"message": "Slow down.", "type":
                                              "rate_limit_error", "param": None,
                                              "code": "rate_limit"}}
    assert http.code == 405 and json.loads(http.body)["error"]["message"] == "Not here."
    assert boom.code == 500 and json.loads(boom.body)["error"]["code"] == "internal_error"
    assert b"secret" not in boom.body and b"Traceback" not in boom.body
    assert boom.headers["Content-Type"] == "application/json"


def test_render_error_is_the_override_point_for_pages():
    (page,) = _fetch_all(tornado.web.Application([(r"/(\w+)", _Html)]), ["/api"])
    assert page.code == 429 and page.headers["Retry-After"] == "3"
    assert page.body == b"<p>429: Slow down.</p>"


def test_websocket_error_message():
    err = APIError(403, "No.", param="id", code="nope")
    assert error_message(err, "r1") == {"type": "error", "id": "r1", "status": 403,
                                        **err.body()}
    assert error_message(err)["id"] is None
