"""The Anthropic SDK, unchanged, against the built-in model (SmolLM2-135M-Instruct
through the llamacpp backend): the Messages API is translated for every backend."""
import anthropic
import pytest

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "Say hello to the world in one short sentence."}]


@pytest.fixture(scope="module")
def claude(gateway, api_key):
    return anthropic.Anthropic(base_url=gateway.url, api_key=None, max_retries=0,
                               default_headers={"x-api-key": api_key})


def test_create_and_stream_with_the_built_in_model(claude):
    msg = claude.messages.create(model=MODEL, max_tokens=20, messages=HELLO,
                                 system="You are friendly.")
    assert msg.content[0].type == "text" and msg.content[0].text.strip()
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 10 and 0 < msg.usage.output_tokens <= 20
    with claude.messages.stream(model=MODEL, max_tokens=4, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 2 and "".join(pieces) == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4
    count = claude.messages.count_tokens(model=MODEL, messages=HELLO)
    assert count.input_tokens > 0


WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def test_tool_use_then_tool_result_with_the_built_in_model(claude):
    """The model is made to use the tool (a grammar under tool_choice "tool"); the
    tool_result goes back in the whole context; the model answers in text (tool_choice
    "none": a 135M model offered the tool again may well use it again)."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = claude.messages.create(model=MODEL, max_tokens=40, messages=ask, tools=[WEATHER],
                                 tool_choice={"type": "tool", "name": "get_weather"})
    assert msg.stop_reason == "tool_use"
    [use] = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str)
    answer = claude.messages.create(
        model=MODEL, max_tokens=30, tools=[WEATHER], tool_choice={"type": "none"},
        messages=ask + [{"role": "assistant", "content": msg.content},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": use.id,
                                                      "content": "18C and sunny"}]}])
    assert answer.content[0].type == "text" and answer.content[0].text.strip()
    assert answer.stop_reason in ("end_turn", "max_tokens")


GREEDY = {"temperature": 0}     # (the current SDK no longer has it as an argument)


def test_a_stop_sequence_of_the_built_in_model_is_named(claude):
    """The local model's worker says which stop sequence ended the text (llama-cpp-python
    only says "stop"), so the Messages answer is ``stop_sequence`` with the sequence; a
    text the model ended itself is ``end_turn``."""
    count = [{"role": "user", "content": "Count from 1 to 10 as a numbered list: 1. 2. 3."}]
    msg = claude.messages.create(model=MODEL, max_tokens=60, messages=count,
                                 stop_sequences=["7.", "3."], extra_body=GREEDY)
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "3."), msg
    assert "3." not in msg.content[0].text and "2" in msg.content[0].text
    with claude.messages.stream(model=MODEL, max_tokens=60, messages=count,
                                stop_sequences=["3."], extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "3.")
    short = claude.messages.create(model=MODEL, max_tokens=200, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Hi!"}],
                                   stop_sequences=["zebra"])
    assert (short.stop_reason, short.stop_sequence) == ("end_turn", None), short
