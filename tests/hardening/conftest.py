"""Fixtures of the hardening tests: one gateway with the echo backend and the in-process
event-loop lag probe (tests.hardening.looplag)."""
from __future__ import annotations

import httpx
import pytest

from tests.helpers import start_gateway

PLUGINS = ["tests.plugins.echo_backend", "tests.hardening.sink_backend",
           "tests.hardening.looplag"]
OK = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def sections(**server) -> dict:
    return {"plugins": {"modules": PLUGINS},
            "models": [{"name": "echo", "backend": "echo"},
                       {"name": "sink", "backend": "sink"}],
            "server": server}


@pytest.fixture(scope="module")
def hard_gw(mongo, tmp_path_factory):
    """Default limits (1 MiB bodies and WebSocket messages)."""
    gw = start_gateway(tmp_path_factory.mktemp("hard"), mongo.uri, sections())
    gw.key = gw.create_key("hardening@example.com")
    yield gw
    gw.stop()


class LoopLag(float):
    """The worst event-loop lag in ms; its repr says where the loop was (for failures)."""

    def __new__(cls, report: dict):
        lag = super().__new__(cls, report["worst_ms"])
        lag.report = report
        return lag

    def __repr__(self) -> str:
        r = self.report
        return (f"{r['worst_ms']:.1f} ms (process CPU meanwhile {r['cpu_ms']:.1f} ms; "
                f"loop thread during a stall:\n{r['stack'] or '(not sampled)'})")


def loop_lag_ms(gw) -> LoopLag:
    """The worst event-loop lag of ``gw`` since the previous call (resets it)."""
    return LoopLag(httpx.get(gw.url + "/_test/looplag", timeout=30).json())


def assert_no_stall(gw, max_ms: float = 100) -> None:
    """The event loop of ``gw`` never stalled for ``max_ms`` since the previous check."""
    lag = loop_lag_ms(gw)
    assert lag < max_ms, f"event loop stalled for {lag!r}"


def assert_json_error(resp: httpx.Response, status: int, code: str | None = None,
                      param: str | None = None, max_bytes: int = 2048) -> dict:
    """An OpenAI-style JSON error of bounded size, without a stack trace."""
    assert resp.status_code == status, resp.text[:500]
    assert len(resp.content) <= max_bytes, len(resp.content)
    assert "Traceback" not in resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err
