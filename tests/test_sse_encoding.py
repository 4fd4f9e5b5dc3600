"""The pre-encoded SSE events are exactly the JSON OpenAI clients expect, for any text."""
import json

import pytest

from gateway.http.sse import ChunkEncoder
from gateway.types import Chunk, Usage

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
