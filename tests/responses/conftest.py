"""A real fake upstream (bench.fake_upstream: text or tool calls) behind one in-process
gateway (tests.inprocess), for the Responses API tests."""
from __future__ import annotations


import openai
import pytest

from tests.inprocess import start_inprocess
from tests.upstream_fixtures import PLAIN, up, upstream_fixture  # noqa: F401 - fixtures



upstream = upstream_fixture("module")


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
