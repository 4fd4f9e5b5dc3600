"""GET /v1/models (tier filtering, backend health) and Prometheus /metrics (access
rules, and the counters after real requests), against one real gateway process with
the echo test backend and an openai_compatible model whose upstream is down."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backends.util import auth, chat_body, data_lines, wait_for
from tests.helpers import free_port

SECRET_PROMPT = "purple elephants dance quietly"


@pytest.fixture(scope="module")
def gw(mongo, tmp_path_factory):
    from tests.helpers import start_gateway
    dead = f"http://127.0.0.1:{free_port()}/v1"
    sections = {
        "plugins": {"modules": ["tests.plugins.echo_backend"]},
        "server": {"metrics_token": "s3cret-token"},
        "models": [{"name": "echo", "backend": "echo"},
                   {"name": "echo-slow", "backend": "echo", "options": {"delay": 0.05}},
                   {"name": "dead", "backend": "openai_compatible",
                    "options": {"base_url": dead, "health_interval": 0.2}}],
        "tiers": {"free": {"models": ["*"]}, "basic": {"models": ["echo"]}},
    }
    g = start_gateway(tmp_path_factory.mktemp("metrics"), mongo.uri, sections)
    g.key = g.create_key("free@example.com")
    g.basic = g.create_key("basic@example.com", tier="basic")
    g.dead = dead
    yield g
    g.stop()


def scrape(gw, headers=None) -> dict:
    resp = httpx.get(gw.url + "/metrics", headers=headers or {})
    assert resp.status_code == 200, resp.text
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_models_lists_every_model_with_health(gw):
    data = httpx.get(gw.url + "/v1/models", headers=auth(gw.key)).json()["data"]
    got = {m["id"]: (m["backend"], m["health"], m["object"]) for m in data}
    assert got == {"echo": ("echo", "ok", "model"), "echo-slow": ("echo", "ok", "model"),
                   "dead": ("openai_compatible", "unavailable", "model")}
    one = httpx.get(gw.url + "/v1/models/dead", headers=auth(gw.key)).json()
    assert one["id"] == "dead" and one["health"] == "unavailable"


def test_models_lists_only_what_the_tier_allows(gw):
    data = httpx.get(gw.url + "/v1/models", headers=auth(gw.basic)).json()["data"]
    assert [m["id"] for m in data] == ["echo"]
    for hidden in ("dead", "echo-slow"):
        r = httpx.get(gw.url + f"/v1/models/{hidden}", headers=auth(gw.basic))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat_body("echo-slow"),
                   headers=auth(gw.basic))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


def test_models_needs_a_key(gw):
    r = httpx.get(gw.url + "/v1/models")
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param",
                                                                "code"}


def test_metrics_is_not_public(gw):
    for headers in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                    {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer wrong"}):
        r = httpx.get(gw.url + "/metrics", headers=headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "unknown_url"
        assert "ayct_" not in r.text
    ok = httpx.get(gw.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9",
                                                 "Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and "ayct_requests_total" in ok.text
    assert httpx.get(gw.url + "/metrics").status_code == 200   # direct loopback scrape


def test_metrics_count_real_requests(gw):
    before = scrape(gw)
    h = auth(gw.key)
    r = httpx.post(gw.url + "/v1/chat/completions", headers=h, timeout=30,
                   json=chat_body("echo", SECRET_PROMPT, stream=True))
    assert r.status_code == 200
    assert httpx.post(gw.url + "/v1/chat/completions", headers=h,
                      json=chat_body("echo", SECRET_PROMPT)).status_code == 200
    assert httpx.post(gw.url + "/v1/chat/completions", headers=h,
                      json=chat_body("no-such-model")).status_code == 404
    r = httpx.post(gw.url + "/v1/chat/completions", headers=h, json=chat_body("dead"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
    assert httpx.post(gw.url + "/v1/chat/completions", headers=auth(gw.basic),
                      json=chat_body("dead")).status_code == 403
    after = wait_for(lambda: (lambda s: s if value(
        s, "ayct_tokens_total", model="echo", direction="out") >= value(
        before, "ayct_tokens_total", model="echo", direction="out") + 8 else None)(scrape(gw)),
        what="token counters")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    chat = "/v1/chat/completions"
    assert delta("ayct_requests_total", route=chat, model="echo", status="200") == 2
    assert delta("ayct_requests_total", route=chat, model="-", status="404") == 1
    assert delta("ayct_requests_total", route=chat, model="dead", status="503") == 1
    assert delta("ayct_requests_total", route=chat, model="dead", status="403") == 1
    assert delta("ayct_backend_errors_total", model="dead", code="503") == 1
    assert delta("ayct_backend_retries_total", model="dead", reason="backend_unavailable") == 1
    assert delta("ayct_limit_rejections_total", limit="model_not_allowed") == 1
    assert delta("ayct_time_to_first_token_seconds_count", model="echo") == 2
    assert delta("ayct_gateway_overhead_seconds_count") >= 3
    assert delta("ayct_tokens_total", model="echo", direction="out") == 8
    assert delta("ayct_tokens_total", model="echo", direction="in") > 0
    replica = ("ayct_backend_replica_up", (("model", "dead"), ("replica", gw.dead)))
    assert after[replica] == 0
    text = httpx.get(gw.url + "/metrics").text
    assert SECRET_PROMPT not in text and "purple" not in text
    assert gw.key not in text and "free@example.com" not in text
    assert SECRET_PROMPT not in gw.log() and "purple" not in gw.log()


def test_active_streams_by_transport_and_disconnects_count_as_499(gw):
    before = scrape(gw)
    assert value(before, "ayct_active_streams", transport="sse") == 0
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(gw.key),
                      json=chat_body("echo-slow", " ".join(["w"] * 200), stream=True),
                      timeout=60) as r:
        lines = data_lines(r)
        next(lines)
        samples = scrape(gw)
        assert value(samples, "ayct_active_streams", transport="sse") == 1
        assert value(samples, "ayct_active_streams", transport="http") == 0
        assert ("ayct_active_streams", (("transport", "ws"),)) in samples
    # the client left mid-stream: the stream ends and the request counts as 499
    labels = {"route": "/v1/chat/completions", "model": "echo-slow"}

    def ended(s):
        return value(s, "ayct_active_streams", transport="sse") == 0 and \
            value(s, "ayct_requests_total", status="499", **labels) > \
            value(before, "ayct_requests_total", status="499", **labels)
    after = wait_for(lambda: (lambda s: s if ended(s) else None)(scrape(gw)),
                     what="the stream to end")
    assert value(after, "ayct_requests_total", status="499", **labels) - \
        value(before, "ayct_requests_total", status="499", **labels) == 1
    assert value(after, "ayct_requests_total", status="200", **labels) == \
        value(before, "ayct_requests_total", status="200", **labels)
