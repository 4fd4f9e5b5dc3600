"""The openai_compatible backend against real HTTP upstreams (bench/fake_upstream.py
processes): replicas, least-busy selection, health checks, retry before the first
token only, timeouts, 502/503/504 errors, and the usage recorded in each case.

One gateway (in-process: tests.inprocess) serves the whole module. Each test owns one model whose replica ports are
reserved up front; the test starts (and kills) real upstream processes on those ports,
and the gateway's health checks notice them come and go."""
from __future__ import annotations

import sys
import threading

import httpx
import pytest

from tests.backends.util import (auth, chat_body, data_lines, set_upstream, upstream_stats,
                                 usage_event, usage_events, wait_for)
from tests.helpers import free_port, start_process, stop_process

CHAT = "/v1/chat/completions"
# model -> (replicas, extra backend options)
MODELS = {"basic": (1, {}), "midkill": (1, {}), "prekill": (1, {}), "failover": (2, {}),
          "health": (2, {}), "leastbusy": (2, {}), "dead": (2, {}), "status": (2, {}),
          "timeout": (1, {"read_timeout": 0.5}), "disconnect": (1, {}), "text": (1, {})}


@pytest.fixture(scope="module")
def gw(mongo, tmp_path_factory):
    from tests.inprocess import start_inprocess
    ports = {name: [free_port() for _ in range(n)] for name, (n, _) in MODELS.items()}
    models = [{"name": name, "backend": "openai_compatible",
               "options": {"base_urls": [f"http://127.0.0.1:{p}/v1" for p in ports[name]],
                           "health_interval": 0.2, "health_timeout": 1, **extra}}
              for name, (_, extra) in MODELS.items()]
    g = start_inprocess(tmp_path_factory.mktemp("oc"), mongo.uri, {
        "models": models, "server": {"metrics_public": True}})
    g.key = g.create_key()
    g.ports = ports
    yield g
    g.stop()


class Upstreams:
    """Real fake-upstream processes on a model's reserved ports."""

    def __init__(self, gw, tmp_path) -> None:
        self.gw, self.tmp, self.procs = gw, tmp_path, []

    def start(self, model: str, index: int, *args: str):
        port = self.gw.ports[model][index]
        url = f"http://127.0.0.1:{port}"
        proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port", str(port),
                              *args], url + "/v1/models",
                             self.tmp / f"upstream-{port}-{len(self.procs)}.log")
        self.procs.append(proc)
        wait_for(lambda: replica_up(self.gw, model, url) == 1, what=f"{url} to be healthy")
        return url, proc

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


@pytest.fixture
def upstreams(gw, tmp_path):
    ups = Upstreams(gw, tmp_path)
    yield ups
    ups.stop()


def replica_up(gw, model: str, url: str) -> float | None:
    line = f'ayct_backend_replica_up{{model="{model}",replica="{url}/v1"}} '
    for row in httpx.get(gw.url + "/metrics").text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return None


def post(gw, body, timeout=60):
    return httpx.post(gw.url + CHAT, json=body, headers=auth(gw.key), timeout=timeout)


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert "Traceback" not in resp.text
    return err


def model_events(gw, model: str, count: int) -> list[dict]:
    return [e for e in usage_events(gw, 0, lambda evs: sum(e["model"] == model for e in evs)
                                    >= count) if e["model"] == model]


def test_streams_through_and_records_reported_usage(gw, upstreams):
    upstreams.start("basic", 0, "--tokens", "5")
    with httpx.stream("POST", gw.url + CHAT, json=chat_body("basic", stream=True,
                      stream_options={"include_usage": True}), headers=auth(gw.key),
                      timeout=60) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        events = list(data_lines(r))
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if isinstance(e, dict) and e.get("choices"))
    assert text == "xxxx" * 5
    assert events[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5,
                                   "total_tokens": 10}
    ev = usage_event(gw, rid)
    assert (ev["status"], ev["completion_tokens"], ev["estimated"]) == (200, 5, False)


def test_upstream_killed_mid_stream_ends_with_an_error_event(gw, upstreams):
    _, proc = upstreams.start("midkill", 0, "--tokens", "2000", "--interval", "0.01")
    events = []
    with httpx.stream("POST", gw.url + CHAT, json=chat_body("midkill", stream=True),
                      headers=auth(gw.key), timeout=60) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        for event in data_lines(r):
            events.append(event)
            if len(events) == 3:
                proc.kill()   # a real upstream crash, after tokens went out
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "backend_error"
    assert set(events[-1]["error"]) == {"message", "type", "param", "code"}
    relayed = sum(1 for e in events if "choices" in e)
    assert relayed >= 3
    ev = usage_event(gw, rid)
    assert ev["status"] == 502 and ev["error_code"] == "backend_error"
    assert ev["completion_tokens"] == relayed and ev["estimated"] is True


def _request_in_thread(gw, body):
    box = {}

    def run():
        box["resp"] = post(gw, body)
    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_upstream_killed_before_first_token_single_replica_is_502(gw, upstreams):
    up, proc = upstreams.start("prekill", 0, "--first-delay", "60")
    t, box = _request_in_thread(gw, chat_body("prekill", stream=True))
    wait_for(lambda: upstream_stats(up)["started"] == 1, what="upstream stream start")
    proc.kill()
    t.join(60)
    assert_error(box["resp"], 502, "backend_error")
    (ev,) = model_events(gw, "prekill", 1)
    assert (ev["status"], ev["error_code"], ev["completion_tokens"]) == (502, "backend_error", 0)


def test_killed_before_first_token_is_retried_on_another_replica(gw, upstreams):
    a, proc_a = upstreams.start("failover", 0, "--first-delay", "60", "--tokens", "4")
    b, proc_b = upstreams.start("failover", 1, "--first-delay", "60", "--tokens", "4")
    t, box = _request_in_thread(gw, chat_body("failover", stream=True))
    started = wait_for(lambda: [u for u in (a, b) if upstream_stats(u)["started"] == 1],
                       what="a replica to start the stream")
    victim = started[0]
    other = b if victim == a else a
    set_upstream(other, first_delay=0)
    (proc_a if victim == a else proc_b).kill()
    t.join(60)
    resp = box["resp"]
    assert resp.status_code == 200, resp.text
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "error" not in resp.text
    assert upstream_stats(other)["finished"] == 1
    ev = usage_event(gw, resp.headers["x-request-id"])
    assert (ev["status"], ev["completion_tokens"], ev["estimated"]) == (200, 4, False)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'ayct_backend_retries_total{model="failover",reason="backend_error"} 1.0' in metrics


def test_dead_replica_is_skipped_then_brought_back(gw, upstreams):
    a, proc_a = upstreams.start("health", 0, "--tokens", "3")
    b, _ = upstreams.start("health", 1, "--tokens", "3")
    proc_a.kill()
    wait_for(lambda: replica_up(gw, "health", a) == 0, what="health check to take A out")
    before = upstream_stats(b)["requests"]
    for _ in range(4):
        assert post(gw, chat_body("health")).status_code == 200
    assert upstream_stats(b)["requests"] == before + 4   # none were tried on A
    upstreams.start("health", 0, "--tokens", "3")        # A comes back on its port
    for _ in range(2):   # equally idle replicas take turns
        assert post(gw, chat_body("health")).status_code == 200
    assert upstream_stats(a)["requests"] == 1


def test_least_busy_replica_gets_the_next_stream(gw, upstreams):
    a, _ = upstreams.start("leastbusy", 0, "--tokens", "400", "--interval", "0.02")
    b, _ = upstreams.start("leastbusy", 1, "--tokens", "400", "--interval", "0.02")
    with httpx.stream("POST", gw.url + CHAT, json=chat_body("leastbusy", stream=True),
                      headers=auth(gw.key), timeout=60) as r1:
        lines = data_lines(r1)   # keep the generator: dropping it closes the response
        next(lines)
        (busy,) = wait_for(lambda: [u for u in (a, b) if upstream_stats(u)["active"] == 1])
        idle = b if busy == a else a
        set_upstream(idle, tokens=2, interval=0)
        for _ in range(2):   # short requests while stream 1 runs: all to the idle one
            assert post(gw, chat_body("leastbusy")).status_code == 200
        assert upstream_stats(busy)["requests"] == 1
        assert upstream_stats(idle)["requests"] == 2
        assert upstream_stats(busy)["active"] == 1   # stream 1 is still running there


def test_all_replicas_unreachable_is_503(gw):
    resp = post(gw, chat_body("dead", stream=True))
    assert_error(resp, 503, "backend_unavailable")
    assert resp.headers["Retry-After"] == "1"
    (ev,) = model_events(gw, "dead", 1)
    assert (ev["status"], ev["error_code"]) == (503, "backend_unavailable")
    models = httpx.get(gw.url + "/v1/models/dead", headers=auth(gw.key)).json()
    assert models["health"] == "unavailable"


def test_upstream_5xx_is_retried_elsewhere_4xx_is_not(gw, upstreams):
    a, _ = upstreams.start("status", 0, "--fail-status", "500", "--tokens", "3")
    b, _ = upstreams.start("status", 1, "--tokens", "3")
    for _ in range(3):
        resp = post(gw, chat_body("status"))
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "xxxx" * 3
    set_upstream(a, fail_status=400)
    set_upstream(b, fail_status=400)
    assert_error(post(gw, chat_body("status")), 400, "upstream_rejected")
    set_upstream(a, fail_status=500)
    set_upstream(b, fail_status=502)
    assert_error(post(gw, chat_body("status")), 502, "backend_error")
    set_upstream(a, fail_status=503)
    set_upstream(b, fail_status=429)
    assert_error(post(gw, chat_body("status")), 503, "backend_unavailable")


def test_read_timeout_is_504(gw, upstreams):
    upstreams.start("timeout", 0, "--first-delay", "60")
    assert_error(post(gw, chat_body("timeout", stream=True)), 504, "backend_timeout")


def test_client_disconnect_closes_the_upstream_connection(gw, upstreams):
    up, _ = upstreams.start("disconnect", 0, "--tokens", "2000", "--interval", "0.01")
    with httpx.stream("POST", gw.url + CHAT, json=chat_body("disconnect", stream=True),
                      headers=auth(gw.key), timeout=60) as r:
        rid = r.headers["x-request-id"]
        lines = data_lines(r)
        next(lines), next(lines)
    # the client is gone: the upstream must see its connection closed
    wait_for(lambda: upstream_stats(up)["disconnected"] == 1, what="upstream disconnect")
    assert upstream_stats(up)["finished"] == 0
    ev = usage_event(gw, rid)
    assert ev["status"] == 499 and ev["error_code"] == "client_disconnected"
    assert ev["completion_tokens"] >= 2 and ev["estimated"] is True


def test_text_completions_stream_through(gw, upstreams):
    upstreams.start("text", 0, "--tokens", "3")
    resp = httpx.post(gw.url + "/v1/completions", json={"model": "text", "prompt": "hi"},
                      headers=auth(gw.key), timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == "xxxx" * 3


def test_metrics_public_when_configured(gw):
    """This module's gateway sets server.metrics_public: proxied clients may scrape too."""
    r = httpx.get(gw.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200 and "ayct_backend_replica_up" in r.text
