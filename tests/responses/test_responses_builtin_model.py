"""The Responses API against the built-in model (SmolLM2-135M-Instruct through
llama-cpp-python, the session ``gateway``): text, streaming, and ``text.format``
json_schema with the SDK's ``responses.parse``."""
from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def client(gateway, api_key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)


def test_create_with_the_builtin_model(client):
    resp = client.responses.create(model=MODEL, instructions="You are a friendly assistant.",
                                   input="Say hello to the world in one short sentence.",
                                   max_output_tokens=30, temperature=0)
    assert resp.status in ("completed", "incomplete") and resp.store is False
    text = resp.output_text.lower()
    assert any(w in text for w in ("hello", "hi", "world", "greet")), text
    assert resp.usage.input_tokens > 10 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


def test_stream_with_the_builtin_model(client):
    events = list(client.responses.create(model=MODEL, input="Count from one to five.",
                                          max_output_tokens=20, temperature=0, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type in (
        "response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 2
    assert "".join(deltas) == events[-1].response.output_text


class Person(BaseModel):
    name: str
    age: int


def test_parse_json_schema_with_the_builtin_model(client):
    resp = client.responses.parse(model=MODEL, input="Invent a person: a name and an age.",
                                  text_format=Person, max_output_tokens=60, temperature=0)
    person = resp.output_parsed
    assert isinstance(person, Person) and person.name and isinstance(person.age, int)


WEATHER = {"type": "function", "name": "get_weather",
           "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def test_function_call_round_trip_with_the_builtin_model(client):
    """The model is made to call the tool (a grammar under the named tool_choice); its
    output goes back as function_call_output in the whole context; the model answers
    (tool_choice "none": a 135M model offered the tool again may well call it again)."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp = client.responses.create(model=MODEL, input=ask, tools=[WEATHER],
                                   tool_choice={"type": "function", "name": "get_weather"},
                                   max_output_tokens=40, temperature=0)
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments).get("city"), str)
    answer = client.responses.create(
        model=MODEL, tools=[WEATHER], tool_choice="none", max_output_tokens=30,
        temperature=0,
        input=ask + [{"type": "function_call", "call_id": calls[0].call_id,
                      "name": "get_weather", "arguments": calls[0].arguments},
                     {"type": "function_call_output", "call_id": calls[0].call_id,
                      "output": "18C and sunny"}])
    assert answer.status in ("completed", "incomplete") and answer.output_text.strip()
    assert [item.type for item in answer.output] == ["message"]
