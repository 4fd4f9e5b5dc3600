"""Helpers shared by the backend tests: polling, usage events, SSE reading."""
from __future__ import annotations

import json

import httpx

from tests.helpers import wait_until


def wait_for(fn, timeout: float = 30.0, what: str = "condition"):
    """Poll ``fn`` until it returns something truthy (see tests.helpers.wait_until)."""
    return wait_until(fn, timeout, what=what)


def usage_event(gw, request_id: str) -> dict:
    """The usage event the gateway recorded for one request (its per-request usage log)."""
    return wait_for(lambda: next((e for e in gw.usage_events()
                                  if e.get("request_id") == request_id), None),
                    what=f"usage of {request_id}")


def upstream_stats(url: str) -> dict:
    return httpx.get(url + "/stats", timeout=10).json()


def set_upstream(url: str, **settings) -> None:
    httpx.post(url + "/settings", json=settings, timeout=10).raise_for_status()


def chat_body(model: str, content: str = "hello there", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def data_lines(response: httpx.Response):
    """Yield each SSE ``data:`` payload of a streaming httpx response as it arrives."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


def usage_events(gw, count: int, ready=None) -> list[dict]:
    """Wait until the gateway's usage log holds ``count`` events (or until
    ``ready(events)`` is true); return them, oldest first."""
    ready = ready or (lambda evs: len(evs) >= count)
    return wait_for(lambda: (lambda evs: evs if ready(evs) else None)(gw.usage_events()),
                    what="usage events")
