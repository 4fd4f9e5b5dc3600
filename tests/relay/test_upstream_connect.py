"""An upstream that never answers the TCP handshake (its accept queue is full): the
connection attempt gives up after ``connect_timeout`` and the client gets the clear
503 ``backend_unavailable`` (with Retry-After), not a hang or a 500."""
from __future__ import annotations

import httpx
import pytest

from tests.backends.test_upstream_http import full_listener
from tests.helpers import start_gateway


@pytest.fixture(scope="module")
def silent_gw(mongo, tmp_path_factory):
    listener, fillers = full_listener()
    port = listener.getsockname()[1]
    g = start_gateway(tmp_path_factory.mktemp("silent"), mongo.uri, {
        "models": [{"name": "silent", "backend": "openai_compatible",
                    "options": {"base_url": f"http://127.0.0.1:{port}/v1",
                                "connect_timeout": 0.3, "health_timeout": 0.3}}]})
    g.key = g.create_key()
    yield g
    g.stop()
    for s in fillers + [listener]:
        s.close()


@pytest.mark.parametrize("stream", [True, False])
def test_connect_timeout_is_a_clear_503(silent_gw, stream):
    resp = httpx.post(silent_gw.url + "/v1/chat/completions",
                      json={"model": "silent", "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}]},
                      headers={"Authorization": f"Bearer {silent_gw.key}"}, timeout=30)
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"] == "1"
    err = resp.json()["error"]
    assert err["code"] == "backend_unavailable" and "silent" in err["message"]
    models = httpx.get(silent_gw.url + "/v1/models/silent",
                       headers={"Authorization": f"Bearer {silent_gw.key}"}, timeout=10).json()
    assert models["health"] == "unavailable"
