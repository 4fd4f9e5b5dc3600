"""The pre-encoded SSE events are exactly the JSON OpenAI clients expect, for any text;
the Responses and Messages text deltas, filled into templates, are byte for byte what
``json.dumps`` of the event gives."""
import json

import pytest

from gateway.http.sse import ChunkEncoder
from gateway.relay import translate_messages as tm
from gateway.relay.sse_events import HOLE, event_template, json_string
from gateway.relay.translate_responses import ResponseBuilder
from gateway.types import Chunk, Usage
from tests.upstream_fixtures import TRICKY_TEXTS

TEXTS = ["plain", 'quote " and \\ backslash', "line\nbreak\ttab", "ünïcödé ✓ 🌟", "", "\x00\x1f"]


def decode(event: str) -> dict:
    assert event.startswith("data: ") and event.endswith("\n\n")
    return json.loads(event[6:-2])


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_events(include_usage):
    enc = ChunkEncoder("chat", "chatcmpl-1", 'model "x"', 123, include_usage)
    events = [decode(enc.encode(Chunk(t))) for t in TEXTS]
    events.append(decode(enc.encode(Chunk(finish_reason="stop"))))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": TEXTS[0]}
    for event, text in zip(events[1:], TEXTS[1:]):
        assert event["choices"][0]["delta"] == ({"content": text} if text else {})
    for event in events:
        assert event["id"] == "chatcmpl-1" and event["model"] == 'model "x"'
        assert event["object"] == "chat.completion.chunk" and event["created"] == 123
        assert ("usage" in event) is include_usage and event.get("usage") is None
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    final = decode(enc.usage(Usage(3, 4)))
    assert final["choices"] == [] and final["usage"] == {"prompt_tokens": 3,
                                                         "completion_tokens": 4,
                                                         "total_tokens": 7}


def test_completion_events():
    enc = ChunkEncoder("completion", "cmpl-1", "m", 1, False)
    for text in TEXTS:
        event = decode(enc.encode(Chunk(text, "length")))
        assert event["object"] == "text_completion"
        assert event["choices"] == [{"index": 0, "text": text, "logprobs": None,
                                     "finish_reason": "length"}]


def dumps_event(name: str, payload: dict) -> str:
    """The event as the Responses and Messages streams send it, encoded by json.dumps."""
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


# What JSON escapes (and '%', which fills the templates), plus a lone surrogate.
TRICKY = [*TRICKY_TEXTS, "\ud800 alone"]


def test_event_template_is_the_event_with_its_holes_filled():
    payload = {"type": "t", "n": HOLE, "fixed": '100% "%s" \\', "inner": {"text": HOLE}}
    template = event_template("t", payload, 2)
    for n, text in enumerate(TRICKY):
        assert template % (n, json_string(text)) == \
            dumps_event("t", {**payload, "n": n, "inner": {"text": text}})
    with pytest.raises(ValueError):
        event_template("t", payload, 1)


def test_responses_events_are_json_dumps_of_the_event():
    b = ResponseBuilder({"model": "m%s", "input": "x"}, 'm%s "1"', events=True)
    kinds = ("response.created", "response.in_progress")
    assert b.start() == [dumps_event(k, {"type": k, "sequence_number": n,
                                         "response": b.response()})
                         for n, k in enumerate(kinds)]
    kind = "response.output_text.delta"
    for n, text in enumerate(TRICKY):
        events = b.add(Chunk(text, delta={"content": text}))
        item_id = b.output[0]["id"]
        payload = {"type": kind, "sequence_number": b.seq - 1, "item_id": item_id,
                   "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}
        assert events[-1] == dumps_event(kind, payload)
        if n == 0:          # the message item opens: its two events come from templates
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            assert events[:2] == [
                dumps_event("response.output_item.added", {
                    "type": "response.output_item.added", "sequence_number": 2,
                    "output_index": 0, "item": {"id": item_id, "type": "message",
                                                "status": "in_progress",
                                                "role": "assistant", "content": []}}),
                dumps_event("response.content_part.added", {
                    "type": "response.content_part.added", "sequence_number": 3,
                    "item_id": item_id, "output_index": 0, "content_index": 0,
                    "part": part})]
    seq = b.seq
    final, obj = b.finish(Usage(1, len(TRICKY)), "stop")
    text = "".join(TRICKY)
    assert obj["output"][0]["content"][0]["text"] == text
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    assert final[:3] == [      # the message item closes: its three events from templates
        dumps_event("response.output_text.done", {
            "type": "response.output_text.done", "sequence_number": seq, "item_id": item_id,
            "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        dumps_event("response.content_part.done", {
            "type": "response.content_part.done", "sequence_number": seq + 1,
            "item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        dumps_event("response.output_item.done", {
            "type": "response.output_item.done", "sequence_number": seq + 2,
            "output_index": 0, "item": obj["output"][0]})]
    assert json.loads(final[-1].split("data: ", 1)[1])["response"] == obj


def test_messages_text_deltas_are_json_dumps_of_the_event():
    s = tm.MessageStream("msg_1", "m", 1)
    s.chunk(Chunk(delta={"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}))
    for text in TRICKY:
        out = s.chunk(Chunk(text))     # the first one opens the text block (index 1)
        assert out.endswith(dumps_event("content_block_delta", {
            "type": "content_block_delta", "index": 1,
            "delta": {"type": "text_delta", "text": text}}))


def test_messages_thinking_deltas_are_json_dumps_of_the_event():
    s = tm.MessageStream("msg_1", "m", 1, thinking=True)
    for text in TRICKY:
        out = s.chunk(Chunk(delta={"reasoning_content": text}))
        assert out.endswith(dumps_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": text}}))


@pytest.mark.parametrize("finish", [None, "stop", "length", "tool_calls"])
def test_every_messages_event_is_json_dumps_of_the_event(finish):
    """The events every answer sends (start, block start and stop, the end) come from
    templates too: byte for byte the events built as dictionaries."""
    msg_id, model = 'msg_"1"\\', "model ✓ 100%"
    s = tm.MessageStream(msg_id, model, 7)
    out = s.chunk(Chunk("hi %s"))
    assert out == dumps_event("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 0, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}}) + dumps_event("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}) + dumps_event(
        "content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "hi %s"}})
    assert s.end(finish, Usage(7, 3)) == dumps_event(
        "content_block_stop", {"type": "content_block_stop", "index": 0}) + dumps_event(
        "message_delta", {"type": "message_delta",
                          "delta": {"stop_reason": tm.stop_reason(finish),
                                    "stop_sequence": None},
                          "usage": {"input_tokens": 7, "output_tokens": 3}}) + dumps_event(
        "message_stop", {"type": "message_stop"})
