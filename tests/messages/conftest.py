"""A real fake upstream (bench.fake_upstream, which can answer with tool calls) behind
an in-process gateway, for the Anthropic Messages API tests; plus a tier of one request
a minute (429), a model whose upstream is down (529) and one that serves one request
at a time (the others wait in the queue)."""
from __future__ import annotations


import anthropic
import pytest

from tests.helpers import free_port
from tests.inprocess import start_inprocess
from tests.upstream_fixtures import PLAIN, up, upstream_fixture  # noqa: F401 - fixtures

TIERS = {"open": {"requests_per_minute": 100000},
         "tight": {"requests_per_minute": 1}}


upstream = upstream_fixture("package")


@pytest.fixture(scope="package")
def gw(mongo, upstream, tmp_path_factory):
    opts = {"base_url": upstream + "/v1", "upstream_model": "fake"}
    down = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "upstream_model": "fake",
            "max_attempts": 1}
    models = [{"name": "fake", "backend": "openai_compatible", "options": opts},
              {"name": "down", "backend": "openai_compatible", "options": down},
              {"name": "one", "backend": "openai_compatible", "options": opts,
               "max_concurrency": 1}]   # a second request waits in the fair queue
    g = start_inprocess(tmp_path_factory.mktemp("messages"), mongo.uri, {
        "models": models, "tiers": TIERS, "limits": {"default_tier": "open"},
        "queue": {"keepalive": 0.1}})
    g.key = g.create_key("messages@example.com")
    yield g
    g.stop()


@pytest.fixture(scope="package")
def client(gw):
    """The official SDK with the key as ``x-api-key`` (what Claude Code sends for
    ``ANTHROPIC_API_KEY``)."""
    return anthropic.Anthropic(base_url=gw.url, api_key=None, auth_token=None,
                               default_headers={"x-api-key": gw.key}, max_retries=0)
