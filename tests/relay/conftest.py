"""A real fake upstream (bench.fake_upstream) behind one gateway (in-process:
tests.inprocess), with a model per unknown-parameter policy and an in-process text
backend (echo) for comparison."""
from __future__ import annotations


import openai
import pytest

from tests.inprocess import start_inprocess
from tests.upstream_fixtures import PLAIN, up, upstream_fixture  # noqa: F401 - fixtures



upstream = upstream_fixture("module")


@pytest.fixture(scope="module")
def gw(mongo, upstream, tmp_path_factory):
    opts = {"base_url": upstream + "/v1", "upstream_model": "fake"}
    models = [{"name": "gpt-relay", "backend": "openai_compatible", "options": opts},
              {"name": "gpt-drop", "backend": "openai_compatible", "options": opts,
               "unknown_params": "drop"},
              {"name": "gpt-refuse", "backend": "openai_compatible", "options": opts,
               "unknown_params": "refuse"},
              {"name": "echo", "backend": "echo"}]
    g = start_inprocess(tmp_path_factory.mktemp("relay"), mongo.uri, {
        "models": models, "plugins": {"modules": ["tests.plugins.echo_backend"]}})
    g.key = g.create_key()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
