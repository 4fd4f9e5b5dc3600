"""The one chunk parser every backend shares (gateway/relay/chunks.py, ``sdk.parse_event``)."""
from __future__ import annotations

from types import SimpleNamespace as NS

from gateway import sdk
from plugins.backends.mlc_engine import _as_mapping


def test_every_choice_and_field_of_an_event_becomes_a_chunk():
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\""}}
    event = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "system_fingerprint": "fp_1",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None},
                         {"index": 1, "delta": {"tool_calls": [call]},
                          "finish_reason": "tool_calls", "logprobs": {"content": []}}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    first, second = sdk.parse_event(event, "chat")
    assert (first.index, first.text, first.delta) == (0, "Hi", {"content": "Hi"})
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (3, 4)
    assert (second.index, second.finish_reason, second.delta["tool_calls"]) == \
        (1, "tool_calls", [call])
    assert second.logprobs == {"content": []} and second.usage is None
    assert first.extra == second.extra == {"system_fingerprint": "fp_1"}


def test_a_usage_only_event_and_a_text_completion():
    (only,) = sdk.parse_event({"choices": [], "usage": {"prompt_tokens": 2}}, "chat", b"{}")
    assert (only.text, only.usage.prompt_tokens, only.raw) == ("", 2, b"{}")
    (text,) = sdk.parse_event({"choices": [{"index": 0, "text": "abc",
                                            "finish_reason": "stop"}]}, "completion")
    assert (text.text, text.delta, text.finish_reason) == ("abc", None, "stop")


def test_engine_objects_parse_like_the_dicts_they_stand_for():
    """The mlc backend hands its engine's response objects to the same parser."""
    response = NS(id="r", choices=[NS(index=0, delta=NS(role="assistant", content="Hey",
                                                        tool_calls=None),
                                      finish_reason=None, logprobs=None)], usage=None)
    (chunk,) = sdk.parse_event(_as_mapping(response), "chat")
    assert (chunk.text, chunk.delta) == ("Hey", {"role": "assistant", "content": "Hey"})


def test_the_stop_sequence_a_finished_choice_names():
    """vLLM names it in ``stop_reason`` (an integer there is a stop token id, not a
    sequence), SGLang in ``matched_stop``; only a finished choice is read."""
    def stop(**choice):
        event = {"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}, **choice}]}
        return [c.stop for c in sdk.parse_event(event, "chat")]
    assert stop(finish_reason="stop", stop_reason="END") == ["END"]
    assert stop(finish_reason="stop", matched_stop="###") == ["###"]
    assert stop(finish_reason="stop", stop_reason=128009) == [None]
    assert stop(finish_reason="stop", stop_reason=None) == [None]
    assert stop(finish_reason=None, stop_reason="END") == [None]
    two = {"choices": [{"index": i, "text": "a", "finish_reason": "stop",
                        "stop_reason": s} for i, s in enumerate(("A", None))]}
    assert [c.stop for c in sdk.parse_event(two, "completion")] == ["A", None]
