"""Fixtures that start real servers: the MongoDB-wire server, gateways, upstreams."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.store import embedded_db
from tests.helpers import free_port, start_gateway, start_process, stop_process


@pytest.fixture(scope="session")
def mongo():
    """The embedded MongoDB-wire server (in-memory engine) on a free port, over TCP."""
    db = embedded_db.start("memory")
    yield db
    db.stop()


@pytest.fixture(scope="session")
def gateway(mongo, tmp_path_factory):
    """One shared gateway with the default llamacpp model (SmolLM2-135M-Instruct)."""
    gw = start_gateway(tmp_path_factory.mktemp("gw"), mongo.uri)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def api_key(gateway):
    return gateway.create_key("shared@example.com")


@pytest.fixture
def start_gw(mongo, tmp_path):
    """Start extra gateways with their own config; all are stopped after the test."""
    started = []

    def start(sections=None, db_name=None, uri=None, **kw):
        gw = start_gateway(tmp_path / f"g{len(started)}", uri or mongo.uri, sections, db_name, **kw)
        started.append(gw)
        return gw
    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def inprocess_gw(mongo, tmp_path):
    """Start gateways in the test process (``tests.inprocess``: the real ``serve`` on a
    loopback port, no subprocess) with their own config; all stop after the test.
    ``gw = inprocess_gw(sections)``, then ``gw.fetch(path, method=..., body=...,
    headers=...)`` or any client on ``gw.url``."""
    from tests.inprocess import start_inprocess
    started = []

    def start(sections=None, db_name=None, uri=None, **kw):
        gw = start_inprocess(tmp_path / f"i{len(started)}", uri or mongo.uri, sections,
                             db_name, **kw)
        started.append(gw)
        return gw
    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def fake_upstream(tmp_path):
    """A real, controllable OpenAI-compatible HTTP upstream (bench.fake_upstream)."""
    started = []

    def start(*args: str):
        port = free_port()
        proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port", str(port),
                              *args], f"http://127.0.0.1:{port}/v1/models",
                             tmp_path / f"upstream-{port}.log")
        started.append(proc)
        return f"http://127.0.0.1:{port}", proc
    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real `python -m llama_cpp.server` with SmolLM2 on loopback (an upstream)."""
    from plugins.backends.llamacpp import default_model_path

    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    proc = start_process([sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(),
                          "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                          "--model_alias", "smol-upstream",
                          # Otherwise any new request, even the gateway's health probe of
                          # /v1/models, cuts off the generation in progress.
                          "--interrupt_requests", "false"],
                         f"http://127.0.0.1:{port}/v1/models", log, timeout=120)
    yield f"http://127.0.0.1:{port}/v1"
    stop_process(proc)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (no browser download). `make test`
    installs it; a missing browser is a failure, not a skip. Module-scoped: Playwright's
    sync API holds an event loop open, which other tests' asyncio.run() cannot share."""
    import playwright.sync_api

    assert Path(CHROMIUM).exists(), "Debian chromium is missing: apt-get install chromium"
    with playwright.sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def screenshot_path(tmp_path):
    """Where a browser test saves its screenshot: docs/ (for the README) when
    UPDATE_SCREENSHOTS=1, else the test's temporary folder."""
    import os

    def path(name: str) -> Path:
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            return Path(__file__).resolve().parent.parent / "docs" / name
        return tmp_path / name
    return path
