"""EventShape: events of a stream's usual shape give the same Chunks undecoded as the
full parse (every field, every type), whatever their content, separators or escapes."""
from __future__ import annotations

import json
import random

import pytest

from plugins.backends.sse import EventShape, parse_line

FIELDS = ("text", "finish_reason", "usage", "index", "delta", "logprobs", "extra", "raw")
PIECES = ["xxxx", "a", "é", "日本", 'he said "hi"', "back\\slash", "new\nline", "", "m",
          "x", "😀", "\u2028", "null", "content", ":", '","', "\t"]


def _stream(kind: str, style: dict, rng: random.Random) -> list[bytes]:
    lines = []
    for i in range(300):
        piece = rng.choice(PIECES)
        choice: dict = {"index": 0}
        if kind == "chat":
            choice["delta"] = {"content": piece} if i % 37 else {"role": "assistant",
                                                                 "content": piece}
        else:
            choice["text"] = piece
        choice["logprobs"] = None
        choice["finish_reason"] = "stop" if i % 101 == 100 else None
        event = {"id": "chatcmpl-1", "object": "o", "created": 5 + i // 120, "model": "m",
                 "choices": [choice]}
        if i % 3:
            event["system_fingerprint"] = "fp"
        lines += [b"data: " + json.dumps(event, **style).encode(), b""]
    head = b'data: {"id":"chatcmpl-1","object":"o","created":5,"model":"m","choices":[{"index":0,'
    return lines + [
        head + b'"delta":{"content":"ab\xff"},"logprobs":null,"finish_reason":null}]}',
        head + b'"delta":{"content":"a\tb"},"logprobs":null,"finish_reason":null}]}',
        head + b'"delta":{"content":"a"},"logprobs":null,"finish_reason":null}]} x',
        b"data: [DONE]"]


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("style", [{}, {"separators": (",", ":")}, {"ensure_ascii": False}])
def test_same_chunks_as_the_full_parse(kind, style):
    shape = EventShape(kind)
    undecoded = 0
    for line in _stream(kind, style, random.Random(7)):
        full = parse_line(line, kind)
        undecoded += shape.match(line[5:].strip()) is not None
        fast = parse_line(line, kind, shape)
        if full in (None, False) or fast in (None, False):
            assert fast == full, line
            continue
        assert len(fast) == len(full)
        for a, b in zip(full, fast):
            for field in FIELDS:
                assert getattr(a, field) == getattr(b, field), (field, line)
                assert type(getattr(a, field)) is type(getattr(b, field)), (field, line)
    assert undecoded > 20     # the shortcut is taken
