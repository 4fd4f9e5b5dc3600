"""The in-process ``mlc`` backend, inside a real gateway (in-process: tests.inprocess;
the shutdown tests start a process), driving a STAND-IN
for ``mlc_llm.AsyncMLCEngine`` (tests/backends/mlc_standin.py): MLC-LLM cannot be
installed from PyPI, so the stand-in has the engine's documented shape and behaviour
(including zero usage for aborted requests). Everything else here is real."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.backends.util import auth, chat_body, data_lines, usage_event, usage_events, wait_for

STANDIN = "tests.backends.mlc_standin:AsyncMLCEngine"
WORDS = " ".join(f"w{i}" for i in range(12))


def model_dir(tmp_path, name, **knobs):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "mlc-chat-config.json").write_text(json.dumps({"standin": knobs}))
    return folder


def calls(folder) -> list[dict]:
    path = folder / "standin-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def mlc_gw(mongo, tmp_path_factory):
    from tests.inprocess import start_inprocess
    tmp = tmp_path_factory.mktemp("mlc")
    dirs = {"fast": model_dir(tmp, "fast"),
            "slow": model_dir(tmp, "slow", delay=0.05),
            "preempt": model_dir(tmp, "preempt", abort_after=2)}
    models = [{"name": f"mlc-{k}", "backend": "mlc",
               "options": {"model": str(v), "engine_factory": STANDIN, "device": "cuda:0",
                           "engine_config": {"max_num_sequence": 8}}}
              for k, v in dirs.items()]
    gw = start_inprocess(tmp / "gw", mongo.uri, {"models": models})
    gw.key = gw.create_key()
    gw.dirs = dirs
    yield gw
    gw.stop()


def test_streams_with_the_documented_call_and_reported_usage(mlc_gw):
    with httpx.stream("POST", mlc_gw.url + "/v1/chat/completions",
                      json=chat_body("mlc-fast", WORDS, stream=True,
                                     stream_options={"include_usage": True}),
                      headers=auth(mlc_gw.key), timeout=60) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        events = list(data_lines(r))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if isinstance(e, dict) and e.get("choices"))
    assert text == WORDS + " "
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 12
    create = next(c for c in calls(mlc_gw.dirs["fast"]) if c.get("request_id") == rid)
    assert create["call"] == "create" and create["kind"] == "chat"
    assert create["stream"] is True and create["stream_options"] == {"include_usage": True}
    init = calls(mlc_gw.dirs["fast"])[0]
    assert init == {"call": "init", "device": "cuda:0", "mode": "server"}
    ev = usage_event(mlc_gw, rid)
    assert (ev["status"], ev["completion_tokens"], ev["estimated"]) == (200, 12, False)


def test_non_streaming_and_text_completions(mlc_gw):
    r = httpx.post(mlc_gw.url + "/v1/chat/completions",
                   json=chat_body("mlc-fast", "one two three", max_tokens=2),
                   headers=auth(mlc_gw.key), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "one two "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    r = httpx.post(mlc_gw.url + "/v1/completions",
                   json={"model": "mlc-fast", "prompt": "alpha beta"},
                   headers=auth(mlc_gw.key), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "alpha beta "


def test_client_disconnect_aborts_the_engine_request(mlc_gw):
    with httpx.stream("POST", mlc_gw.url + "/v1/chat/completions",
                      json=chat_body("mlc-slow", " ".join(["tok"] * 400), stream=True),
                      headers=auth(mlc_gw.key), timeout=60) as r:
        rid = r.headers["x-request-id"]
        lines = data_lines(r)
        next(lines), next(lines)
    wait_for(lambda: {"call": "abort", "request_id": rid} in calls(mlc_gw.dirs["slow"]),
             what="engine.abort(request_id)")
    ev = usage_event(mlc_gw, rid)
    assert ev["status"] == 499 and ev["error_code"] == "client_disconnected"
    assert 2 <= ev["completion_tokens"] < 400 and ev["estimated"] is True


def test_engine_abort_reports_zero_usage_so_the_gateway_counts(mlc_gw):
    """MLC reports 0 tokens for an aborted request; the gateway records what it relayed."""
    with httpx.stream("POST", mlc_gw.url + "/v1/chat/completions",
                      json=chat_body("mlc-preempt", WORDS, stream=True,
                                     stream_options={"include_usage": True}),
                      headers=auth(mlc_gw.key), timeout=60) as r:
        rid = r.headers["x-request-id"]
        events = list(data_lines(r))
    tokens = [e for e in events if isinstance(e, dict) and e.get("choices")]
    assert len(tokens) == 2
    assert events[-1]["error"]["code"] == "backend_error"
    ev = usage_event(mlc_gw, rid)
    assert ev["completion_tokens"] == 2 and ev["estimated"] is True
    assert ev["status"] == 502


def test_models_lists_mlc_models_as_healthy(mlc_gw):
    data = httpx.get(mlc_gw.url + "/v1/models", headers=auth(mlc_gw.key)).json()["data"]
    assert {(m["id"], m["backend"], m["health"]) for m in data} == {
        ("mlc-fast", "mlc", "ok"), ("mlc-slow", "mlc", "ok"), ("mlc-preempt", "mlc", "ok")}


def test_shutdown_terminates_the_engine(mongo, tmp_path):
    from tests.helpers import start_gateway
    folder = model_dir(tmp_path, "m")
    gw = start_gateway(tmp_path / "gw", mongo.uri, {"models": [
        {"name": "m", "backend": "mlc", "options": {"model": str(folder),
                                                    "engine_factory": STANDIN}}]})
    gw.stop()
    assert gw.proc.returncode == 0
    assert calls(folder)[-1] == {"call": "terminate"}


def test_without_mlc_llm_the_gateway_says_what_to_install(mongo, tmp_path):
    from tests.helpers import start_gateway
    with pytest.raises(RuntimeError) as info:
        start_gateway(tmp_path / "gw", mongo.uri, {"models": [
            {"name": "m", "backend": "mlc", "options": {"model": "/nonexistent"}}]},
            timeout=30)
    message = str(info.value)
    assert "mlc_llm" in message and "openai_compatible" in message
    assert "Traceback" not in message


def test_usage_of_all_requests_is_metadata_only(mlc_gw):
    events = usage_events(mlc_gw, 1)
    for ev in events:
        assert not {k for k in ev if k in ("messages", "prompt", "content", "text")}
        assert WORDS not in json.dumps(ev, default=str)
