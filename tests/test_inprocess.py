"""The in-process gateway (tests.inprocess) runs the real ``serve``: plugins and config
as a process gets them, a configuration error at start reaches the test, and ``stop()``
runs the real drain and shutdown (usage written)."""
import pytest

from gateway.config import ConfigError
from tests.helpers import db_run

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}]}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "in process"}]}


def test_serves_stops_and_writes_usage_at_shutdown(inprocess_gw):
    gw = inprocess_gw({**ECHO, "usage": {"flush_interval": 60.0}})
    key = gw.create_key("inprocess@example.com")
    r = gw.fetch("/v1/chat/completions", "POST", BODY, {"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "in process "
    assert "echo" in [m["id"] for m in gw.fetch("/v1/models", headers={
        "Authorization": f"Bearer {key}"}).json()["data"]]
    gw.stop()   # SIGTERM path of serve: drain, then the usage buffer is written
    assert db_run(gw.db_uri, gw.db_name, lambda s: s.usage.total_requests()) == 1


def test_a_config_error_at_start_is_raised(inprocess_gw):
    with pytest.raises(ConfigError, match=r"\[nonsense\]"):
        inprocess_gw({**ECHO, "nonsense": {"x": 1}})
