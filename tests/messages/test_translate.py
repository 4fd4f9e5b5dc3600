"""The pure translation of gateway/relay/translate_messages.py: what no upstream of the
other tests sends (text then tool calls in one answer, arguments that are not JSON),
and the error mapping."""
import json

import pytest

from gateway.errors import APIError
from gateway.relay import translate_messages as tm
from gateway.types import Chunk, Usage


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_text_then_tool_calls_are_blocks_in_order():
    s = tm.MessageStream("msg_1", "m", 7)
    out = s.chunk(Chunk("Let me check."))
    out += s.chunk(Chunk(delta={"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                                "function": {"name": "f",
                                                             "arguments": '{"x":'}}]}))
    out += s.chunk(Chunk(delta={"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}))
    out += s.chunk(Chunk(delta={"tool_calls": [{"index": 1, "id": "call_b",
                                                "function": {"name": "g"}}]}))
    out += s.chunk(Chunk(finish_reason="tool_calls"))
    out += s.end("tool_calls", Usage(7, 9))
    got = [(n, d.get("index"), d.get("content_block", d.get("delta"))) for n, d in events(out)]
    assert got == [
        ("message_start", None, None),
        ("content_block_start", 0, {"type": "text", "text": ""}),
        ("content_block_delta", 0, {"type": "text_delta", "text": "Let me check."}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "tool_use", "id": "call_a", "name": "f",
                                    "input": {}}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '{"x":'}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": "1}"}),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, {"type": "tool_use", "id": "call_b", "name": "g",
                                    "input": {}}),
        ("content_block_stop", 2, None),
        ("message_delta", None, {"stop_reason": "tool_use", "stop_sequence": None}),
        ("message_stop", None, None)]
    assert events(out)[0][1]["message"]["usage"]["input_tokens"] == 7
    assert events(out)[-2][1]["usage"] == {"input_tokens": 7, "output_tokens": 9}


def test_an_empty_answer_still_has_start_and_stop():
    names = [n for n, _ in events(tm.MessageStream("msg_2", "m", 1).end("length", Usage()))]
    assert names == ["message_start", "message_delta", "message_stop"]


def test_message_object_from_a_choice():
    choice = {"message": {"content": "ok", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": '{"a": [1]}'}},
        {"id": "c2", "function": {"name": "g", "arguments": "not json"}}]},
        "finish_reason": "tool_calls"}
    obj = tm.message_object("msg_3", "m", choice, Usage(3, 4))
    assert obj["content"] == [{"type": "text", "text": "ok"},
                              {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": [1]}},
                              {"type": "tool_use", "id": "c2", "name": "g", "input": {}}]
    assert obj["stop_reason"] == "tool_use"
    assert obj["usage"]["input_tokens"] == 3 and obj["usage"]["output_tokens"] == 4


@pytest.mark.parametrize("status,code,want_status,want_type", [
    (503, "backend_busy", 529, "overloaded_error"),
    (503, "model_restarting", 529, "overloaded_error"),
    (503, "service_unavailable", 503, "api_error"),
    (500, "internal_error", 500, "api_error"),
    (429, "tokens_per_minute", 429, "rate_limit_error"),
    (403, "ip_not_allowed", 403, "permission_error"),
])
def test_errors_take_anthropics_status_and_type(status, code, want_status, want_type):
    err = tm.anthropic_error(APIError(status, "why", code=code, headers={"Retry-After": "3"}))
    assert (err.status, err.type, err.headers) == (want_status, want_type, {"Retry-After": "3"})
    assert tm.error_body(err) == {"type": "error", "error": {"type": want_type,
                                                             "message": "why"}}


def test_system_blocks_and_user_images():
    chat = tm.to_chat({"model": "m", "max_tokens": 5,
                       "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                       "messages": [{"role": "user", "content": [
                           {"type": "text", "text": "look"},
                           {"type": "image", "source": {"type": "base64",
                                                        "media_type": "image/png",
                                                        "data": "AAAA"}}]}]})
    assert chat["messages"] == [
        {"role": "system", "content": "a\nb"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(APIError) as info:
        tm.to_chat({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]})
    assert info.value.status == 400 and "document" in info.value.message
