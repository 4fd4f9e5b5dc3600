"""Fixtures around a real fake upstream (bench.fake_upstream), shared by the relay,
Responses and Messages tests: ``upstream`` (its URL, a process of its own) and ``up``
(the upstream reset to plain text, with ``up.set(**settings)`` and ``up.last()``, the
body the gateway forwarded)."""
from __future__ import annotations

import sys

import httpx
import pytest

from tests.helpers import free_port, start_process, stop_process

PLAIN = {"tokens": 6, "interval": 0.0, "chunk_chars": 4, "tool_calls": [], "texts": [],
         "reasoning": 0, "send_usage": True, "first_delay": 0.0, "fail_status": 0,
         "stop_after": 0, "stop_key": "stop_reason"}

# Pieces of text JSON must escape: quotes, backslashes, control characters, DEL, non-ASCII,
# emoji (with a skin-tone modifier), the line and paragraph separators, and '%'.
TRICKY_TEXTS = ['say "hi"', "back\\slash \\n \\u0041", "ctl \x00\x01\x08\x1b\x1f\x7f",
                "tab\t nl\n cr\r crlf\r\n", "na\u00efve caf\u00e9 \u65e5\u672c\u8a9e",
                "\U0001f389\U0001f44d\U0001f3fd", "line\u2028para\u2029end",
                "100% %s %d %%", "</script>"]


class Up:
    """Controls a running fake upstream."""

    def __init__(self, url: str) -> None:
        self.url = url

    def set(self, **settings) -> None:
        httpx.post(self.url + "/settings", json=settings, timeout=10).raise_for_status()

    def last(self) -> dict:
        return httpx.get(self.url + "/last", timeout=10).json()


def upstream_fixture(scope: str = "module"):
    """The ``upstream`` fixture, at ``scope``: the URL of a fake upstream process."""
    @pytest.fixture(scope=scope)
    def upstream(tmp_path_factory):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port",
                              str(port)], url + "/v1/models",
                             tmp_path_factory.mktemp("up") / "upstream.log")
        yield url
        stop_process(proc)
    return upstream


@pytest.fixture
def up(upstream):
    """The upstream, reset to plain text."""
    u = Up(upstream)
    u.set(**PLAIN)
    return u
