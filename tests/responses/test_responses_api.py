"""POST /v1/responses through the official openai SDK, against an upstream that streams
text or tool calls (bench.fake_upstream): the response object, the typed SSE events in
order, a function-call round trip, text.format, usage accounting; and the 400s of a
service that keeps no content."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.upstream_fixtures import TRICKY_TEXTS

TEXT = "xxxx" * 6          # what the fake upstream streams: 6 pieces of 4 characters
CALLS = [{"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "c"})},
         {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}]
TOOLS = [{"type": "function", "name": c["name"], "description": f"{c['name']} tool",
          "parameters": {"type": "object", "properties": {}}} for c in CALLS]


def test_text_response_object(client, up):
    resp = client.responses.create(model="gpt-relay", input="Say hi",
                                   instructions="Be brief.", max_output_tokens=50,
                                   temperature=0.25, top_p=0.5, metadata={"ticket": "42"},
                                   store=True)
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status == "completed" and resp.model == "gpt-relay"
    assert resp.store is False                       # whatever the request asked
    assert resp.metadata == {"ticket": "42"}
    assert resp.output_text == TEXT
    [item] = resp.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert [(p.type, p.text) for p in item.content] == [("output_text", TEXT)]
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == \
        (5, 6, 11)
    # What went upstream: the chat translation, no Responses-only field.
    last = up.last()
    assert last["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Say hi"}]
    assert (last["max_tokens"], last["temperature"], last["top_p"]) == (50, 0.25, 0.5)
    assert not {"store", "metadata", "instructions", "input"} & last.keys()


def test_message_items_with_text_parts(client, up):
    client.responses.create(model="gpt-relay", input=[
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Hello "},
                     {"type": "input_text", "text": "there"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": "Again"}])
    assert up.last()["messages"] == [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Again"}]


def test_length_limit_is_incomplete(client, up):
    resp = client.responses.create(model="gpt-relay", input="hi", max_output_tokens=3)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "xxxx" * 3


def _events(gw, body: dict) -> tuple[list[str], list[dict]]:
    """The raw SSE stream: the ``event:`` names and the data payloads."""
    r = httpx.post(gw.url + "/v1/responses", json={**body, "stream": True}, timeout=30,
                   headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    names, payloads = [], []
    for block in r.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        names.append(lines["event"])
        payloads.append(json.loads(lines["data"]))
    return names, payloads


def test_streaming_text_events_in_order(client, up, gw):
    stream = client.responses.create(model="gpt-relay", input="hi", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added",
                     *["response.output_text.delta"] * 6, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    item_id = events[2].item.id
    assert {e.item_id for e in events[3:-2]} == {item_id}
    assert events[-4].text == TEXT and events[-3].part.text == TEXT
    assert events[-2].item.status == "completed"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == TEXT and final.store is False
    assert final.usage.output_tokens == 6 and final.id == events[0].response.id
    # On the wire: an `event:` line naming each event, as OpenAI sends them; no [DONE].
    names, payloads = _events(gw, {"model": "gpt-relay", "input": "hi"})
    assert names == [p["type"] for p in payloads] == types


def test_stream_helper_accumulates(client, up):
    with client.responses.stream(model="gpt-relay", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TEXT == final.output_text


def test_reasoning_text_is_a_reasoning_item_before_the_message(client, up):
    """A backend that streams reasoning text (reasoning_content, as vLLM sends for a
    reasoning model): a ``reasoning`` item with one ``reasoning_text`` part, streamed as
    ``response.reasoning_text.delta`` events, then the message (before: dropped)."""
    up.set(reasoning=3)
    resp = client.responses.create(model="gpt-relay", input="hi")
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    reasoning = resp.output[0]
    assert reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [(c.type, c.text) for c in reasoning.content] == [("reasoning_text", "rrrr" * 3)]
    assert resp.output_text == TEXT
    with client.responses.stream(model="gpt-relay", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[2:] == [
        "response.output_item.added", "response.content_part.added",
        *["response.reasoning_text.delta"] * 3, "response.reasoning_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 6, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert {e.output_index for e in events if "reasoning_text" in e.type} == {0}
    assert {e.output_index for e in events if "output_text" in e.type} == {1}
    assert final.output[0].content[0].text == "rrrr" * 3 and final.output_text == TEXT


def test_text_json_must_escape_arrives_intact(client, up):
    """Each delta is filled into a template (not json.dumps of an event): quotes,
    backslashes, control characters, non-ASCII, emoji and U+2028 come out as sent."""
    up.set(texts=TRICKY_TEXTS, tokens=len(TRICKY_TEXTS))
    with client.responses.stream(model="gpt-relay", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == TRICKY_TEXTS and final.output_text == "".join(TRICKY_TEXTS)


def test_function_call_round_trip(client, up):
    up.set(tool_calls=CALLS)
    ask = [{"role": "user", "content": "Weather and time in Paris?"}]
    resp = client.responses.create(model="gpt-relay", input=ask, tools=TOOLS,
                                   tool_choice="auto", parallel_tool_calls=True)
    assert resp.status == "completed"
    calls = [o for o in resp.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments, c.status) for c in calls] == \
        [(f"call_{i}", c["name"], c["arguments"], "completed") for i, c in enumerate(CALLS)]
    assert len(resp.output) == 2 and all(c.id.startswith("fc_") for c in calls)
    last = up.last()
    assert last["tools"] == [{"type": "function", "function": {
        "name": t["name"], "description": t["description"], "parameters": t["parameters"]}}
        for t in TOOLS]
    assert last["tool_choice"] == "auto" and last["parallel_tool_calls"] is True
    # The client runs the tools and sends the whole context back, with the outputs.
    up.set(tool_calls=[])
    history = ask + [o.model_dump(exclude_none=True) for o in resp.output] + [
        {"type": "function_call_output", "call_id": "call_0", "output": "18C, sunny"},
        {"type": "function_call_output", "call_id": "call_1", "output": "14:05"}]
    resp2 = client.responses.create(model="gpt-relay", input=history, tools=TOOLS)
    assert resp2.output_text == TEXT
    assert up.last()["messages"] == [
        ask[0],
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for i, c in enumerate(CALLS)]},
        {"role": "tool", "tool_call_id": "call_0", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "14:05"}]


def test_streaming_function_calls(client, up):
    up.set(tool_calls=CALLS)
    events = list(client.responses.create(model="gpt-relay", input="weather?", tools=TOOLS,
                                          tool_choice={"type": "function",
                                                       "name": "get_weather"},
                                          stream=True))
    assert up.last()["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    types = [e.type for e in events]
    per_call = [["response.output_item.added",
                 *["response.function_call_arguments.delta"] * -(-len(c["arguments"]) // 4),
                 "response.function_call_arguments.done", "response.output_item.done"]
                for c in CALLS]
    assert types == ["response.created", "response.in_progress", *per_call[0], *per_call[1],
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.output_index, e.arguments) for e in done] == \
        [(i, c["arguments"]) for i, c in enumerate(CALLS)]
    for i, c in enumerate(CALLS):
        args = "".join(e.delta for e in events if e.type ==
                       "response.function_call_arguments.delta" and e.output_index == i)
        assert args == c["arguments"]
    final = events[-1].response
    assert [(o.type, o.name, o.call_id) for o in final.output] == \
        [("function_call", c["name"], f"call_{i}") for i, c in enumerate(CALLS)]


def test_text_format_json_schema(client, up):
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "city", "schema": schema, "strict": True}
    resp = client.responses.create(model="gpt-relay", input="a city", text={"format": fmt})
    assert up.last()["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "city", "schema": schema, "strict": True}}
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "city"
    client.responses.create(model="gpt-relay", input="json please",
                            text={"format": {"type": "json_object"}})
    assert up.last()["response_format"] == {"type": "json_object"}
    client.responses.create(model="gpt-relay", input="plain", text={"format": {"type": "text"}})
    assert "response_format" not in up.last()


def test_usage_recorded_with_the_api_named(client, up, gw):
    def recorded():
        return [e for e in gw.usage_events() if e.get("transport") == "responses"
                and e.get("status") == 200]
    before = len(recorded())
    client.responses.create(model="gpt-relay", input="count me", metadata={"k": "v"})
    deadline = time.time() + 10
    while time.time() < deadline:
        events = recorded()
        if len(events) > before:      # this request's own event
            break
        time.sleep(0.1)
    assert events, gw.usage_events()
    assert events[-1]["model"] == "gpt-relay" and events[-1]["completion_tokens"] == 6
    assert events[-1]["prompt_tokens"] == 5
    assert not any("count me" in json.dumps(e) for e in gw.usage_events())   # no content


def test_upstream_failure_before_output_is_an_http_error(client, up):
    up.set(fail_status=500)
    with pytest.raises(openai.APIStatusError) as exc:
        list(client.responses.create(model="gpt-relay", input="hi", stream=True))
    assert exc.value.status_code >= 500


# -- a service that keeps no content ------------------------------------------------------
@pytest.mark.parametrize("field,value", [("previous_response_id", "resp_123"),
                                         ("conversation", "conv_123"),
                                         ("prompt", {"id": "pmpt_1"})])
def test_stateful_fields_are_refused(client, up, field, value):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-relay", input="hi", extra_body={field: value})
    msg = exc.value.message
    assert "keeps no content" in msg and "whole context" in msg and field in msg
    assert exc.value.body["param"] == field


def test_item_reference_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="keeps no content"):
        client.responses.create(model="gpt-relay",
                                input=[{"type": "item_reference", "id": "msg_1"}])


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_stored_responses_cannot_be_fetched(gw, method):
    r = httpx.request(method, gw.url + "/v1/responses/resp_abc", timeout=10,
                      headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "keeps no content" in msg and "whole context" in msg
    # Without a key: the usual 401 first.
    assert httpx.get(gw.url + "/v1/responses/resp_abc", timeout=10).status_code == 401


def test_retrieve_through_the_sdk_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="never stored"):
        client.responses.retrieve("resp_abc")


@pytest.mark.parametrize("tool", ["web_search", "web_search_preview", "file_search",
                                  "computer_use_preview", "code_interpreter"])
def test_builtin_tools_are_refused_by_name(client, tool):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-relay", input="hi", tools=[{"type": tool}])
    assert repr(tool) in exc.value.message and "function" in exc.value.message


def test_background_and_unknown_fields_are_refused(client):
    with pytest.raises(openai.BadRequestError, match="keeps no content"):
        client.responses.create(model="gpt-relay", input="hi", background=True)
    with pytest.raises(openai.BadRequestError, match="frobnicate"):
        client.responses.create(model="gpt-relay", input="hi", extra_body={"frobnicate": 1})


def test_bad_requests(client, gw):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError, match="input"):
        client.responses.create(model="gpt-relay", input=[])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.responses.create(model="gpt-relay", input="hi", temperature=5)
    r = httpx.post(gw.url + "/v1/responses", json={"model": "gpt-relay", "input": "hi"})
    assert r.status_code == 401
