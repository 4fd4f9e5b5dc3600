"""The pure translation (gateway.relay.translate_responses), without a server: item
order when text and tool calls mix, response.failed, and what to_chat refuses."""
from __future__ import annotations

import json

import pytest

from gateway.errors import APIError
from gateway.relay.translate_responses import ResponseBuilder, to_chat
from gateway.types import Chunk, Usage


def _call(index, id=None, name=None, args=None):
    fn = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    return Chunk(delta={"tool_calls": [{"index": index, **({"id": id} if id else {}),
                                        "function": fn}]})


def decoded(events: list[str]) -> list[tuple[str, dict]]:
    """The builder's encoded SSE events as (event name, payload), each one event whose
    name is its payload's type."""
    out = []
    for text in events:
        name, data, end = text.split("\n", 2)
        payload = json.loads(data.removeprefix("data: "))
        assert end == "\n" and name == "event: " + payload["type"]
        out.append((payload["type"], payload))
    return out


def test_text_then_tool_call_makes_two_items_in_order():
    b = ResponseBuilder({"model": "m", "input": "x"}, "m", events=True)
    events = []
    for chunk in (Chunk(delta={"role": "assistant", "content": "Let me check."}),
                  _call(0, "call_a", "lookup", '{"q":'), _call(0, args='"x"}'),
                  Chunk(finish_reason="tool_calls")):
        events += b.add(chunk)
    final, obj = b.finish(Usage(3, 4), "tool_calls")
    events = decoded(events + final)
    types = [k for k, _ in events]
    assert types == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added",
                     "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]
    assert [p["sequence_number"] for _, p in events] == list(range(len(types)))
    assert [o["type"] for o in obj["output"]] == ["message", "function_call"]
    assert obj["output"][0]["content"][0]["text"] == "Let me check."
    assert (obj["output"][1]["call_id"], obj["output"][1]["arguments"]) == \
        ("call_a", '{"q":"x"}')
    assert obj["usage"]["total_tokens"] == 7 and obj["store"] is False


def test_failure_after_the_start_is_response_failed():
    b = ResponseBuilder({"model": "m", "input": "x"}, "m", events=True)
    started = b.add(Chunk("Hel"))
    failed = b.failed({"message": "The model backend failed.", "code": "backend_error"})
    kind, payload = decoded(failed)[-1]
    assert kind == "response.failed" and payload["sequence_number"] == len(started)
    assert payload["response"]["status"] == "failed"
    assert payload["response"]["error"] == {"code": "backend_error",
                                            "message": "The model backend failed."}


def test_non_streaming_builder_makes_no_events():
    b = ResponseBuilder({"model": "m", "input": "x"}, "m")
    assert b.add(Chunk("a")) == [] and b.add(Chunk("b")) == []
    events, obj = b.finish(Usage(1, 2), "length")
    assert events == [] and obj["status"] == "incomplete"
    assert obj["output"][0]["content"][0]["text"] == "ab"


@pytest.mark.parametrize("body,param", [
    ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"model": "m", "input": [{"type": "input_file_call"}]}, "input[0]"),
    ({"model": "m"}, "input"),
    ({"input": "x"}, "model"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
])
def test_to_chat_refuses(body, param):
    with pytest.raises(APIError) as exc:
        to_chat(body)
    assert exc.value.status == 400 and exc.value.param == param


def test_to_chat_merges_a_turns_text_and_calls():
    chat = to_chat({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_text", "text": "done"}]}]})
    assert chat["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]
