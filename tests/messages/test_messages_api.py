"""The Anthropic Messages API (/v1/messages, /v1/messages/count_tokens) with the
official anthropic SDK, unchanged, against a real OpenAI-compatible upstream that can
answer with tool calls (bench.fake_upstream) behind an in-process gateway."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import pytest

from tests.helpers import wait_until
from tests.upstream_fixtures import TRICKY_TEXTS

HI = [{"role": "user", "content": "Say hi."}]
CALLS = [{"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "c"})},
         {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}]
TOOLS = [{"name": "get_weather", "description": "The weather in a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}},
         {"name": "get_time", "input_schema": {"type": "object"}}]


def sse(resp: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each event of a raw Messages stream."""
    out = []
    for block in resp.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_create_translates_the_request_and_answers_a_message(client, up):
    msg = client.messages.create(
        model="fake", max_tokens=2000, system=[{"type": "text", "text": "Be brief."}],
        messages=HI, stop_sequences=["END"], metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        # sampling parameters (the current SDK no longer has them as arguments)
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20})
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "fake"
    assert msg.id.startswith("msg_")
    assert [(b.type, b.text) for b in msg.content] == [("text", "xxxx" * 6)]
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (5, 6)
    sent = up.last()   # what the upstream got: the gateway's chat request
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Say hi."}]
    assert (sent["max_tokens"], sent["stop"], sent["temperature"], sent["top_p"],
            sent["top_k"]) == (2000, ["END"], 0.5, 0.9, 20)
    assert "thinking" not in sent and "metadata" not in sent


THINK = {"type": "enabled", "budget_tokens": 1024}


def test_thinking_comes_back_as_a_thinking_block_when_asked_for(client, up, gw):
    """A backend that streams reasoning text (reasoning_content, as vLLM sends for a
    reasoning model): with ``thinking`` enabled it is a thinking block before the text,
    created or streamed; without it, it is dropped (before: dropped either way)."""
    up.set(reasoning=3)
    msg = client.messages.create(model="fake", max_tokens=2000, messages=HI, thinking=THINK)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "rrrr" * 3 and msg.content[0].signature == ""
    assert msg.content[1].text == "xxxx" * 6
    with client.messages.stream(model="fake", max_tokens=2000, messages=HI,
                                thinking={"type": "adaptive"}) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert kinds == ["thinking_delta"] * 3 + ["text_delta"] * 6
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None))
            for b in final.content] == [("thinking", "rrrr" * 3), ("text", "xxxx" * 6)]
    raw = sse(httpx.post(gw.url + "/v1/messages", timeout=30, headers={"x-api-key": gw.key},
                         json={"model": "fake", "max_tokens": 2000, "messages": HI,
                               "stream": True, "thinking": THINK}))
    starts = [(d["index"], d["content_block"]) for n, d in raw if n == "content_block_start"]
    assert starts == [(0, {"type": "thinking", "thinking": "", "signature": ""}),
                      (1, {"type": "text", "text": ""})]
    assert [d["index"] for n, d in raw if n == "content_block_stop"] == [0, 1]
    for off in ({}, {"thinking": {"type": "disabled"}}):
        plain = client.messages.create(model="fake", max_tokens=2000, messages=HI, **off)
        assert [b.type for b in plain.content] == ["text"]
        with client.messages.stream(model="fake", max_tokens=2000, messages=HI,
                                    **off) as stream:
            assert {e.delta.type for e in stream if e.type == "content_block_delta"} == \
                {"text_delta"}


@pytest.mark.parametrize("thinking, says", [
    ({"type": "enabled", "budget_tokens": 100}, "at least 1024"),
    ({"type": "enabled", "budget_tokens": 4096}, "less than max_tokens"),
    ({"type": "enabled"}, "at least 1024"),
    ({"type": "sometimes"}, "thinking: expected"),
    ("yes", "thinking: expected")])
def test_an_invalid_thinking_setting_is_a_400_naming_it(client, up, thinking, says):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="fake", max_tokens=2000, messages=HI,
                               extra_body={"thinking": thinking})
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert says in err.value.body["error"]["message"]


@pytest.mark.parametrize("key", ["stop_reason", "matched_stop"])
def test_a_stop_sequence_that_ended_the_text_is_named(client, up, gw, key):
    """A backend that says which stop sequence matched (vLLM's ``stop_reason``, SGLang's
    ``matched_stop``): ``stop_reason: "stop_sequence"`` and the sequence, created or
    streamed (before: always ``end_turn``). Without a match it stays ``end_turn``."""
    up.set(stop_after=2, stop_key=key)
    msg = client.messages.create(model="fake", max_tokens=50, messages=HI,
                                 stop_sequences=["END", "STOP"])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")
    assert msg.content[0].text == "xxxx" * 2
    with client.messages.stream(model="fake", max_tokens=50, messages=HI,
                                stop_sequences=["END"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
    raw = sse(httpx.post(gw.url + "/v1/messages", timeout=30, headers={"x-api-key": gw.key},
                         json={"model": "fake", "max_tokens": 50, "messages": HI,
                               "stream": True, "stop_sequences": ["END"]}))
    assert [d["delta"] for n, d in raw if n == "message_delta"] == [
        {"stop_reason": "stop_sequence", "stop_sequence": "END"}]
    plain = client.messages.create(model="fake", max_tokens=50, messages=HI)
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)


def test_max_tokens_stop_reason(client, up):
    msg = client.messages.create(model="fake", max_tokens=3, messages=HI)
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].text == "xxxx" * 3 and msg.usage.output_tokens == 3


def test_stream_text_with_the_sdk_and_the_event_order(client, up, gw):
    with client.messages.stream(model="fake", max_tokens=50, messages=HI) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "xxxx" * 6 and len(texts) == 6
    assert final.content[0].text == "xxxx" * 6 and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 6)
    raw = httpx.post(gw.url + "/v1/messages", timeout=30,
                     headers={"x-api-key": gw.key, "anthropic-version": "2023-06-01"},
                     json={"model": "fake", "max_tokens": 50, "messages": HI, "stream": True})
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse(raw)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start"] + ["content_block_delta"] * 6 + \
        ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    assert events[0][1]["message"]["id"].startswith("msg_")
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "xxxx"}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == 6


def test_text_json_must_escape_arrives_intact(client, up):
    """Each text_delta is filled into a template (not json.dumps of an event): quotes,
    backslashes, control characters, non-ASCII, emoji and U+2028 come out as sent."""
    up.set(texts=TRICKY_TEXTS, tokens=len(TRICKY_TEXTS))
    with client.messages.stream(model="fake", max_tokens=50, messages=HI) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == TRICKY_TEXTS and final.content[0].text == "".join(TRICKY_TEXTS)


def test_tool_use_then_tool_result_round_trip(client, up):
    up.set(tool_calls=CALLS)
    ask = [{"role": "user", "content": "Weather and time in Paris?"}]
    msg = client.messages.create(model="fake", max_tokens=100, messages=ask, tools=TOOLS,
                                 tool_choice={"type": "any"})
    assert msg.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in msg.content] == \
        [("tool_use", f"call_{i}", c["name"], json.loads(c["arguments"]))
         for i, c in enumerate(CALLS)]
    sent = up.last()
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": TOOLS[0]["input_schema"]}}
    assert sent["tool_choice"] == "required"
    # The client runs the tools and sends the results back.
    up.set(tool_calls=[])
    history = ask + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_0", "content": "18 C, sunny"},
            {"type": "tool_result", "tool_use_id": "call_1", "is_error": True,
             "content": [{"type": "text", "text": "no clock"}]},
            {"type": "text", "text": "Summarise."}]}]
    answer = client.messages.create(model="fake", max_tokens=100, messages=history,
                                    tools=TOOLS, tool_choice={"type": "tool",
                                                              "name": "get_time"})
    assert answer.stop_reason == "end_turn" and answer.content[0].text == "xxxx" * 6
    sent = up.last()
    assert sent["messages"][1] == {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(json.loads(c["arguments"]))}}
            for i, c in enumerate(CALLS)]}
    assert sent["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "Error: no clock"},
        {"role": "user", "content": "Summarise."}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


def test_streamed_tool_use_arrives_as_input_json_deltas(client, up):
    up.set(tool_calls=CALLS)
    with client.messages.stream(model="fake", max_tokens=100, messages=HI,
                                tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.id, b.name, b.input) for b in final.content] == \
        [(f"call_{i}", c["name"], json.loads(c["arguments"])) for i, c in enumerate(CALLS)]
    partial = [e.delta.partial_json for e in events
               if e.type == "content_block_delta" and e.index == 0]
    assert "".join(partial) == CALLS[0]["arguments"] and len(partial) > 2
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["tool_use", "tool_use"]


def test_count_tokens_is_the_gateways_estimate(client):
    short = client.messages.count_tokens(model="fake", messages=HI)
    # About four characters a token: "Say hi." and 8 for the message.
    assert short.input_tokens == (len("Say hi.") + 8) // 4
    long = client.messages.count_tokens(
        model="fake", system="You answer in French. " * 20, tools=TOOLS,
        messages=[{"role": "user", "content": "Say hi. " * 100}])
    assert long.input_tokens > short.input_tokens + 200
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.count_tokens(model="nope", messages=HI)
    assert info.value.body["error"]["type"] == "not_found_error"


def test_keys_as_x_api_key_or_bearer_and_refusals_in_anthropics_shape(gw, up):
    bearer = anthropic.Anthropic(base_url=gw.url, auth_token=gw.key, max_retries=0)
    assert bearer.messages.create(model="fake", max_tokens=5, messages=HI).content
    wrong = anthropic.Anthropic(base_url=gw.url, api_key=None, max_retries=0,
                                default_headers={"x-api-key": "ayct_wrong"})
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model="fake", max_tokens=5, messages=HI)
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": info.value.body["error"]["message"]}}
    none = gw.fetch("/v1/messages", "POST", {"model": "fake", "max_tokens": 5, "messages": HI})
    assert none.status_code == 401
    assert none.json()["error"]["type"] == "authentication_error"
    # x-api-key is the Messages API's header only.
    chat = gw.fetch("/v1/chat/completions", "POST", {"model": "fake", "messages": HI},
                    headers={"x-api-key": gw.key})
    assert chat.status_code == 401


def test_invalid_requests_are_400_and_404_in_anthropics_shape(client, gw):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="nope", max_tokens=5, messages=HI)
    assert info.value.body["error"]["type"] == "not_found_error"
    headers = {"x-api-key": gw.key}
    for body, field in [({"model": "fake", "messages": HI}, "max_tokens"),
                        ({"model": "fake", "max_tokens": 5, "messages": []}, "messages"),
                        ({"model": "fake", "max_tokens": 5, "messages": HI,
                          "temperature": 1.5}, "temperature"),
                        ({"model": "fake", "max_tokens": 5, "messages": HI,
                          "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
                         "web_search"),
                        ({"model": "fake", "max_tokens": 5, "messages": HI, "bogus": 1},
                         "bogus")]:
        r = gw.fetch("/v1/messages", "POST", body, headers=headers)
        assert r.status_code == 400, body
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert field in err["error"]["message"]


def test_busy_backends_are_529_overloaded(client):
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="down", max_tokens=5, messages=HI)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_a_tight_tier_is_429_with_retry_after(gw, up):
    key = gw.create_key("tight@example.com", tier="tight")
    tight = anthropic.Anthropic(base_url=gw.url, api_key=None, max_retries=0,
                                default_headers={"x-api-key": key})
    tight.messages.create(model="fake", max_tokens=5, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as info:
        tight.messages.create(model="fake", max_tokens=5, messages=HI)
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "requests per minute" in info.value.body["error"]["message"]


def test_usage_rollups_name_the_messages_api(client, gw, up):
    msg = client.messages.create(model="fake", max_tokens=5, messages=HI)
    wait_until(lambda: any(e.get("request_id") == msg.id for e in gw.usage_events()),
               timeout=10)
    event = next(e for e in gw.usage_events() if e.get("request_id") == msg.id)
    assert event["transport"] == "messages" and event["status"] == 200
    assert event["completion_tokens"] == 5 and "content" not in json.dumps(event)


def test_a_stream_waiting_in_the_queue_gets_pings_then_its_message(gw, up):
    up.set(interval=0.1)   # six tokens: about half a second per request
    body = {"model": "one", "max_tokens": 50, "messages": HI, "stream": True}
    headers = {"x-api-key": gw.key}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(gw.fetch, "/v1/messages", "POST", body, headers)
        wait_until(lambda: httpx.get(up.url + "/stats").json()["active"] == 1)
        second = pool.submit(gw.fetch, "/v1/messages", "POST", body, headers)
        results = [first.result(), second.result()]
    waited = sse(results[1])
    names = [name for name, _ in waited]
    assert names[0] == "ping" and names.count("ping") >= 2, names
    rest = [n for n in names if n != "ping"]
    assert rest[0] == "message_start" and rest[-2:] == ["message_delta", "message_stop"]
    assert "".join(d["delta"]["text"] for n, d in waited
                   if n == "content_block_delta") == "xxxx" * 6
    assert "ping" not in [name for name, _ in sse(results[0])]
