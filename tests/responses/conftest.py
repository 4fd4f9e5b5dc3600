"""A real fake upstream (bench.fake_upstream: text or tool calls) behind one in-process
gateway (tests.inprocess), for the Responses API tests."""
from __future__ import annotations

import sys

import httpx
import openai
import pytest

from tests.helpers import free_port, start_process, stop_process
from tests.inprocess import start_inprocess

PLAIN = {"tokens": 6, "interval": 0.0, "chunk_chars": 4, "tool_calls": [], "reasoning": 0,
         "send_usage": True, "first_delay": 0.0, "fail_status": 0}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port", str(port)],
                         url + "/v1/models", tmp_path_factory.mktemp("up") / "upstream.log")
    yield url
    stop_process(proc)


@pytest.fixture
def up(upstream):
    """The upstream, reset to plain text; ``up.set(**settings)``, ``up.last()`` (the body
    the gateway forwarded)."""
    class Up:
        url = upstream

        def set(self, **settings):
            httpx.post(upstream + "/settings", json=settings, timeout=10).raise_for_status()

        def last(self) -> dict:
            return httpx.get(upstream + "/last", timeout=10).json()
    u = Up()
    u.set(**PLAIN)
    return u


@pytest.fixture(scope="module")
def gw(mongo, upstream, tmp_path_factory):
    opts = {"base_url": upstream + "/v1", "upstream_model": "fake"}
    g = start_inprocess(tmp_path_factory.mktemp("responses"), mongo.uri, {
        "models": [{"name": "gpt-relay", "backend": "openai_compatible", "options": opts}]})
    g.key = g.create_key()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
