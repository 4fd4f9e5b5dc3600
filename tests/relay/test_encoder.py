"""The SSE encoder relays upstream event bytes with only id and model replaced, and
falls back to decode/re-encode whenever a byte pattern is ambiguous."""
from __future__ import annotations

import json

from gateway.http.sse import ChunkEncoder
from gateway.types import Chunk


def event(out: bytes | str) -> dict:
    out = out.decode() if isinstance(out, bytes) else out
    assert out.startswith("data: ") and out.endswith("\n\n")
    return json.loads(out[6:-2])


def test_raw_bytes_kept_but_id_and_model():
    enc = ChunkEncoder("chat", "chatcmpl-ours", "our-model", 1, False)
    raw = (b'{"id": "up-1", "object": "chat.completion.chunk", "created": 7, '
           b'"model": "up-model", "system_fingerprint": "fp", "choices": [{"index": 0, '
           b'"delta": {"content": "caf\\u00e9 \\"x\\""}, "logprobs": null, '
           b'"finish_reason": null}]}')
    out = enc.encode(Chunk("café \"x\"", raw=raw))
    assert out == raw.replace(b'"id": "up-1"', b'"id":"chatcmpl-ours"').replace(
        b'"model": "up-model"', b'"model":"our-model"').join([b"data: ", b"\n\n"])


def test_ambiguous_pattern_is_reencoded():
    enc = ChunkEncoder("chat", "chatcmpl-ours", "m", 1, False)
    first = b'{"id":"same","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}'
    enc.encode(Chunk(raw=first))
    # A tool call whose id equals the upstream's chunk id: the byte pattern occurs twice.
    raw = (b'{"id":"same","object":"chat.completion.chunk","created":1,"model":"m",'
           b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"same",'
           b'"type":"function","function":{"name":"f","arguments":""}}]},'
           b'"finish_reason":null}]}')
    data = event(enc.encode(Chunk(delta={}, raw=raw)))
    assert data["id"] == "chatcmpl-ours" and data["model"] == "m"
    assert data["choices"][0]["delta"]["tool_calls"][0]["id"] == "same"


def test_plain_chunks_with_delta_logprobs_index_and_extra():
    enc = ChunkEncoder("chat", "chatcmpl-1", "m", 3, True)
    calls = [{"index": 0, "id": "call_1", "type": "function",
              "function": {"name": "f", "arguments": '{"a"'}}]
    data = event(enc.encode(Chunk(index=1, delta={"role": "assistant", "tool_calls": calls},
                                  logprobs={"content": []},
                                  extra={"system_fingerprint": "fp"})))
    assert data["choices"] == [{"index": 1, "delta": {"role": "assistant", "tool_calls": calls},
                                "logprobs": {"content": []}, "finish_reason": None}]
    assert data["system_fingerprint"] == "fp" and data["usage"] is None
    # Plain text on another choice still gets its own role on its first chunk.
    data = event(enc.encode(Chunk("hi", index=0)))
    assert data["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}
