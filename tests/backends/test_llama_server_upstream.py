"""openai_compatible in front of a real OpenAI-compatible server: `python -m
llama_cpp.server` with SmolLM2 (the `llama_server` fixture). It sends no usage chunk
even when asked, so the gateway counts the relayed tokens and marks them estimated."""
from __future__ import annotations

import httpx
import pytest

from tests.backends.util import auth, chat_body, data_lines, usage_event

pytest.importorskip("llama_cpp")
pytest.importorskip("llama_cpp.server.app")


@pytest.fixture(scope="module")
def smol_gw(mongo, llama_server, tmp_path_factory):
    from tests.inprocess import start_inprocess
    gw = start_inprocess(tmp_path_factory.mktemp("llama-upstream"), mongo.uri, {"models": [
        {"name": "smol", "backend": "openai_compatible",
         "options": {"base_url": llama_server, "upstream_model": "smol-upstream"}}]})
    gw.key = gw.create_key()
    yield gw
    gw.stop()


def test_real_upstream_streams_and_usage_is_estimated(smol_gw):
    body = chat_body("smol", "Name three colours.", stream=True, max_tokens=12,
                     temperature=0, stream_options={"include_usage": True})
    with httpx.stream("POST", smol_gw.url + "/v1/chat/completions", json=body,
                      headers=auth(smol_gw.key), timeout=120) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        events = list(data_lines(r))
    assert events[-1] == "[DONE]"
    pieces = [e["choices"][0]["delta"].get("content") for e in events
              if isinstance(e, dict) and e.get("choices")]
    text = "".join(p for p in pieces if p)
    assert text.strip()
    relayed = sum(1 for p in pieces if p)
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == relayed and usage["prompt_tokens"] > 0
    ev = usage_event(smol_gw, rid)
    assert ev["status"] == 200 and ev["estimated"] is True
    assert ev["completion_tokens"] == relayed


def test_real_upstream_health_and_non_streaming(smol_gw):
    models = httpx.get(smol_gw.url + "/v1/models", headers=auth(smol_gw.key)).json()["data"]
    assert models == [{"id": "smol", "object": "model", "created": 0,
                       "owned_by": "allyoucantoken", "backend": "openai_compatible",
                       "health": "ok", "capabilities": ["chat", "completions"]}]
    r = httpx.post(smol_gw.url + "/v1/chat/completions", headers=auth(smol_gw.key),
                   json=chat_body("smol", "Say hi.", max_tokens=8, temperature=0), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip()
