"""Pass-through: what a richer upstream sends (tool calls, several choices, logprobs,
reasoning_content, system_fingerprint) reaches the official openai SDK intact through
the gateway, streaming and not; only the id and the model name are the gateway's."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.backends.util import usage_event
from tests.helpers import sse_events

CALLS = [{"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius",
                                                          "note": "quote \" and ünï ✓"})},
         {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}]
ASK = [{"role": "user", "content": "weather and time in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": c["name"], "parameters": {"type": "object"}}}
         for c in CALLS]


def test_streaming_tool_calls_arrive_whole(client, up):
    up.set(tool_calls=CALLS)
    with client.chat.completions.stream(model="gpt-relay", messages=ASK, tools=TOOLS) as s:
        chunks = []
        for event in s:
            if event.type == "chunk":
                chunks.append(event.chunk)
        final = s.get_final_completion()
    msg = final.choices[0].message
    assert [(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls] == \
        [(f"call_{i}", c["name"], c["arguments"]) for i, c in enumerate(CALLS)]
    assert final.choices[0].finish_reason == "tool_calls"
    # Every argument piece came as its own delta, with its index, as the upstream sent it.
    pieces = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert len(pieces) == 2 + sum(-(-len(c["arguments"]) // 4) for c in CALLS)
    assert {c.id for c in chunks} == {final.id} and final.id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"gpt-relay"}
    assert all(c.system_fingerprint == "fp_fake" for c in chunks)


def test_non_streaming_tool_calls(client, up, gw):
    up.set(tool_calls=CALLS)
    resp = client.chat.completions.create(model="gpt-relay", messages=ASK, tools=TOOLS,
                                          tool_choice="auto")
    msg = resp.choices[0].message
    assert msg.content is None and resp.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in msg.tool_calls] == \
        [(f"call_{i}", "function", c["name"], c["arguments"]) for i, c in enumerate(CALLS)]
    assert resp.system_fingerprint == "fp_fake" and resp.model == "gpt-relay"
    # The tools went upstream as sent; usage counts every argument piece.
    assert up.last()["tools"] == TOOLS and up.last()["tool_choice"] == "auto"
    assert resp.usage.completion_tokens == 2 + sum(-(-len(c["arguments"]) // 4) for c in CALLS)


def test_tool_result_messages_are_accepted(client, up):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'}]
    resp = client.chat.completions.create(model="gpt-relay", messages=history, tools=TOOLS)
    assert resp.choices[0].message.content == "xxxx" * 6
    assert up.last()["messages"] == history


def test_two_choices_streaming_and_not(client, up, gw):
    stream = client.chat.completions.create(model="gpt-relay", messages=ASK, n=2, stream=True,
                                            stream_options={"include_usage": True})
    texts: dict[int, str] = {}
    finish = {}
    chunks = list(stream)
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            finish[ch.index] = ch.finish_reason or finish.get(ch.index)
    assert texts == {0: "xxxx" * 6, 1: "xxxx" * 6} and finish == {0: "stop", 1: "stop"}
    assert chunks[-1].usage.completion_tokens == 12     # both choices count
    resp = client.chat.completions.create(model="gpt-relay", messages=ASK, n=2)
    assert [(c.index, c.message.content, c.finish_reason) for c in resp.choices] == \
        [(0, "xxxx" * 6, "stop"), (1, "xxxx" * 6, "stop")]
    assert resp.usage.completion_tokens == 12
    assert usage_event(gw, resp.id)["completion_tokens"] == 12


def test_logprobs_reach_the_client(client, up):
    stream = client.chat.completions.create(model="gpt-relay", messages=ASK, stream=True,
                                            logprobs=True, top_logprobs=2)
    tokens = [lp.token for c in stream for ch in c.choices if ch.logprobs
              for lp in ch.logprobs.content]
    assert tokens == ["xxxx"] * 6
    resp = client.chat.completions.create(model="gpt-relay", messages=ASK, logprobs=True,
                                          top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert [t.token for t in content] == ["xxxx"] * 6
    assert all(len(t.top_logprobs) == 2 and t.logprob == -0.25 for t in content)
    assert up.last()["logprobs"] is True and up.last()["top_logprobs"] == 2


def test_reasoning_content_passes(client, up, gw):
    up.set(reasoning=3)
    chunks = list(client.chat.completions.create(model="gpt-relay", messages=ASK, stream=True))
    reasoning = "".join((ch.delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks for ch in c.choices)
    assert reasoning == "rrrr" * 3
    resp = client.chat.completions.create(model="gpt-relay", messages=ASK)
    assert resp.choices[0].message.model_extra["reasoning_content"] == "rrrr" * 3
    assert resp.choices[0].message.content == "xxxx" * 6
    assert resp.usage.completion_tokens == 9


def test_raw_events_are_the_upstream_bytes_with_our_id_and_model(gw, up):
    up.set(reasoning=1)
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {gw.key}"},
                   json={"model": "gpt-relay", "messages": ASK, "stream": True})
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    first = events[0]
    assert first["id"] == r.headers["x-request-id"] or first["id"].startswith("chatcmpl-")
    # Everything but id and model is what the upstream sent, key order included.
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert first["model"] == "gpt-relay" and first["choices"][0]["delta"] == \
        {"reasoning_content": "rrrr"}


def test_estimated_usage_covers_tool_arguments_and_choices(gw, up):
    """No usage from the upstream: the estimate counts argument characters and choices."""
    long_args = json.dumps({"text": "y" * 400})
    up.set(tool_calls=[{"name": "save", "arguments": long_args}], chunk_chars=500,
           send_usage=False)
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "save", "arguments": long_args}}]},
        {"role": "tool", "tool_call_id": "c", "content": "saved"}]
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {gw.key}"},
                   json={"model": "gpt-relay", "messages": history, "n": 2, "tools": TOOLS})
    body = r.json()
    # The prompt estimate counts the earlier call's arguments and the tool definitions.
    assert body["usage"]["prompt_tokens"] >= (len(long_args) + len(json.dumps(TOOLS))) // 4
    assert [c["message"]["tool_calls"][0]["function"]["arguments"] for c in body["choices"]] \
        == [long_args, long_args]
    # two choices x (name + 412 argument characters) / 4 characters a token
    assert body["usage"]["completion_tokens"] >= 2 * len(long_args) // 4
    event = usage_event(gw, body["id"])
    assert event["estimated"] is True and event["completion_tokens"] == \
        body["usage"]["completion_tokens"]


@pytest.mark.parametrize("model, outcome", [("gpt-relay", "pass"), ("gpt-drop", "drop"),
                                            ("gpt-refuse", "refuse")])
def test_vendor_fields_follow_the_model_policy(client, up, model, outcome):
    vendor = {"min_p": 0.05, "repetition_penalty": 1.1, "chat_template_kwargs": {"x": True}}
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=model, messages=ASK, reasoning_effort="low", extra_body={"top_k": 20, **vendor},
        stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    if outcome == "refuse":
        with pytest.raises(openai.BadRequestError) as err:
            list(call())
        assert err.value.code == "unknown_parameter"
        assert err.value.param in vendor
        return
    assert "".join(c.choices[0].delta.content or "" for c in call() if c.choices) == "xxxx" * 6
    sent = up.last()
    # Known fields always go through, typed; unknown ones per policy.
    assert sent["top_k"] == 20 and sent["reasoning_effort"] == "low"
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert sent["model"] == "fake"
    for name, value in vendor.items():
        assert (sent.get(name) == value) if outcome == "pass" else (name not in sent)


@pytest.mark.parametrize("field, value, param", [
    ("top_k", "many", "top_k"), ("top_logprobs", 99, "top_logprobs"), ("n", 0, "n"),
    ("reasoning_effort", 3, "reasoning_effort"),
    ("stream_options", {"continuous_usage_stats": "yes"},
     "stream_options.continuous_usage_stats")])
def test_known_fields_stay_strict_under_pass(gw, field, value, param):
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {gw.key}"},
                   json={"model": "gpt-relay", "messages": ASK, field: value, "min_p": 0.1})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_nan_is_refused_even_in_a_passed_field(gw):
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {gw.key}",
                            "Content-Type": "application/json"},
                   content=b'{"model":"gpt-relay","messages":[{"role":"user","content":"a"}],'
                           b'"min_p":NaN}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_text_backend_refuses_several_choices_and_unknown_fields(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="echo", messages=ASK, n=2)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="echo", messages=ASK, extra_body={"min_p": 0.1})
    assert err.value.code == "unknown_parameter"
    # Plain text backends still work as before, n=1 and top_k included.
    resp = client.chat.completions.create(model="echo", messages=ASK, n=1,
                                          extra_body={"top_k": 5})
    assert resp.choices[0].message.content.split() == ASK[0]["content"].split()
