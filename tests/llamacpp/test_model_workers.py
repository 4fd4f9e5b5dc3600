"""Local models run in supervised model workers: a crash costs one worker's in-flight
requests, never the gateway; ``serve --workers N`` shares one worker (one copy of the
weights); the gateway process never loads native model code.

Everything is real: the gateway process, the SmolLM2 model in llama.cpp worker
processes, and the signals (SIGKILL, and SIGSEGV, the signal a native crash raises)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from plugins.backends.llamacpp_plan import default_model_path
from tests.helpers import (GatewayProcess, env, gateway_setup, start_gateway, wait_http,
                           wait_until)

MODELS = [{"name": "alpha", "backend": "llamacpp"}, {"name": "beta", "backend": "llamacpp"}]
LONG = [{"role": "user", "content": "Count from one to three hundred, one number per line."}]


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def ready(gw) -> dict:
    return httpx.get(gw.url + "/readyz", timeout=10).json()


def worker_pid(gw, model: str) -> int:
    return ready(gw)["backends"][model]["pid"]


def native_libraries(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return sorted({line.split()[-1] for line in fh
                       if "libllama" in line or "libggml" in line})


@pytest.fixture(scope="module")
def two_models(mongo, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("workers"), mongo.uri, {"models": MODELS},
                       timeout=120)
    gw.key = gw.create_key()
    yield gw
    gw.stop()


class Stream:
    """A streamed chat request read in a thread: its events, as they come."""

    def __init__(self, gw, model: str, max_tokens: int = 600) -> None:
        self.events: list = []
        self.status = None
        self.done = threading.Event()
        body = {"model": model, "messages": LONG, "stream": True, "max_tokens": max_tokens,
                "temperature": 0}
        self.thread = threading.Thread(target=self._run, args=(gw, body), daemon=True)
        self.thread.start()

    def _run(self, gw, body) -> None:
        try:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body,
                              headers=auth(gw.key), timeout=120) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        self.events.append(data if data == "[DONE]" else json.loads(data))
        finally:
            self.done.set()

    def tokens(self) -> int:
        return sum(1 for e in self.events if isinstance(e, dict) and e.get("choices"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_dead_worker_costs_only_its_streams(two_models, sig):
    gw = two_models
    gateway_pid = gw.proc.pid
    victim = worker_pid(gw, "alpha")
    other = Stream(gw, "beta")
    doomed = Stream(gw, "alpha")
    wait_until(lambda: doomed.tokens() >= 3 and other.tokens() >= 3, timeout=60,
               what="both streams under way")
    os.kill(victim, sig)

    # The stream on the dead worker ends with a clean error event.
    assert doomed.done.wait(30)
    assert doomed.status == 200
    error = next(e for e in doomed.events if isinstance(e, dict) and "error" in e)
    assert error["error"]["code"] == "model_restarting"
    assert "[DONE]" not in doomed.events[:-1]

    # Until the worker is back: /readyz and /v1/models name the model that is down, and
    # a new request gets 503 model_restarting with Retry-After.
    down = ready(gw)
    if down["backends"]["alpha"]["state"] == "restarting":
        assert down["models"] == {"alpha": False, "beta": True}
        models = httpx.get(gw.url + "/v1/models", headers=auth(gw.key)).json()["data"]
        assert {m["id"]: m["health"] for m in models}["alpha"] == "restarting"
        r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(gw.key), timeout=30,
                       json={"model": "alpha", "messages": LONG, "max_tokens": 2})
        if r.status_code == 503:       # (the worker may be back already on a fast machine)
            assert r.json()["error"]["code"] == "model_restarting"
            assert int(r.headers["Retry-After"]) >= 1

    # The stream on the other model is untouched: it runs to its end.
    assert other.done.wait(120)
    assert other.status == 200 and other.events[-1] == "[DONE]"
    assert not [e for e in other.events if isinstance(e, dict) and "error" in e]

    # The worker comes back under a new pid; the next request succeeds; the gateway is
    # the same process throughout.
    wait_until(lambda: ready(gw)["models"]["alpha"], timeout=60, what="alpha back")
    assert worker_pid(gw, "alpha") != victim
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(gw.key), timeout=60,
                   json={"model": "alpha", "messages": [{"role": "user", "content": "Hi"}],
                         "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert gw.proc.poll() is None and gw.proc.pid == gateway_pid

    # The log says how the worker ended and how long the restart took.
    how = f"was killed by {sig.name}"
    wait_until(lambda: how in gw.log() and "model worker alpha back after" in gw.log(),
               what="the worker's end and restart in the log")

    # Its usage is recorded: the cut stream with its error, the tokens it relayed.
    wait_until(lambda: [e for e in gw.usage_events() if e.get("error_code") ==
                        "model_restarting" and e["completion_tokens"] >= 3],
               what="the usage of the cut stream")


def test_the_gateway_process_loads_no_native_model_code(two_models):
    gw = two_models
    r = httpx.post(gw.url + "/v1/chat/completions", headers=auth(gw.key), timeout=60,
                   json={"model": "beta", "messages": [{"role": "user", "content": "Hi"}],
                         "max_tokens": 2})
    assert r.status_code == 200
    assert native_libraries(gw.proc.pid) == []
    assert any("libllama" in lib for lib in native_libraries(worker_pid(gw, "beta")))


def test_capacity_is_reported_in_health_and_metrics(two_models):
    gw = two_models
    assert ready(gw)["backends"]["alpha"]["capacity"] == 1
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'ayct_model_capacity{model="alpha"} 1.0' in metrics


def test_the_default_model_answers_a_1000_token_prompt(gateway, api_key):
    """The prompt length at which a -march=native build on AMX Xeons died (16+ tokens
    take llama.cpp's batched matrix path), and far beyond."""
    numbers = " ".join(str(i) for i in range(1, 400))       # ~1,000 tokens
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=auth(api_key), timeout=120,
                   json={"model": "smollm2-135m", "max_tokens": 8, "temperature": 0,
                         "messages": [{"role": "user", "content": numbers +
                                       "\nWhich number comes after 399?"}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] >= 1000
    assert r.json()["choices"][0]["message"]["content"]


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_serve_workers_shares_one_model_worker_and_dies_with_its_parent(mongo, tmp_path):
    setup = gateway_setup(tmp_path, mongo.uri, {"models": [MODELS[0]]})
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "-c", str(setup.config_path),
                             "serve", "--workers", "2"], stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, env=env(), cwd=str(tmp_path))
    try:
        wait_http(setup.url + "/healthz", 120, proc, log_path)
        wait_until(lambda: log_path.read_text().count(" worker ") >= 2, timeout=60,
                   what="both gateway processes")
        children = _children(proc.pid)
        cmdlines = {p: open(f"/proc/{p}/cmdline", "rb").read() for p in children}
        model_workers = [p for p, c in cmdlines.items() if b"worker_server" in c]
        gateways = [p for p in children if p not in model_workers]
        assert len(model_workers) == 1 and len(gateways) == 2    # one copy of the weights
        for pid in [proc.pid, *gateways]:
            assert native_libraries(pid) == []
        weights_kb = os.path.getsize(default_model_path()) // 1024
        assert _rss_kb(model_workers[0]) > weights_kb // 2
        key = GatewayProcess(setup.url, proc, log_path, setup.config_path, setup.db_uri,
                             setup.db_name, setup.data_dir).create_key()
        for _ in range(4):       # new connections: both gateway processes, one worker
            r = httpx.post(setup.url + "/v1/chat/completions", headers=auth(key), timeout=60,
                           json={"model": "alpha", "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200, r.text
        # SIGKILL of the parent: the gateway processes and the model worker exit too.
        proc.kill()
        proc.wait()
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and
                                   open(f"/proc/{p}/stat").read().split()[2] != "Z"
                                   for p in children),
                   timeout=30, what="every child of the killed parent gone")
    finally:
        if proc.poll() is None:
            proc.kill()
