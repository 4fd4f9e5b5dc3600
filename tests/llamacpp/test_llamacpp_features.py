"""What the llama.cpp backend (in its model worker) does of the OpenAI request, with the real
SmolLM2 model through the gateway and the official openai SDK: grammar-constrained
response_format, a named tool call, logprobs, seed, stop; a 400 naming anything else."""
import json

import httpx
import jsonschema
import openai
import pytest

from tests.helpers import wait_until

MODEL = "smollm2-135m"
PERSON = {"type": "object",
          "properties": {"name": {"type": "string"},
                         "age": {"type": "integer", "minimum": 0},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
                                  "maxItems": 2}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
WEATHER = {"type": "function",
           "function": {"name": "get_weather", "description": "Weather in a city",
                        "parameters": {"type": "object",
                                       "properties": {"city": {"type": "string"},
                                                      "unit": {"enum": ["C", "F"]}},
                                       "required": ["city", "unit"]}}}


@pytest.fixture(scope="module")
def client(gateway, api_key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)


def ask(text):
    return [{"role": "user", "content": text}]


def test_json_schema_output_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    resp = client.chat.completions.create(model=MODEL, max_tokens=80, temperature=0,
                                          messages=ask("Describe a person."),
                                          response_format=fmt)
    assert resp.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(resp.choices[0].message.content), PERSON)
    # Streaming too, at a temperature where unconstrained output would wander off.
    stream = client.chat.completions.create(model=MODEL, max_tokens=80, temperature=1.2,
                                            seed=3, messages=ask("Any person, please."),
                                            response_format=fmt, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_is_parseable(client):
    resp = client.chat.completions.create(model=MODEL, max_tokens=60, temperature=0,
                                          messages=ask('Return JSON: {"ok": true}'),
                                          response_format={"type": "json_object"})
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_named_tool_call(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    resp = client.chat.completions.create(model=MODEL, max_tokens=40, temperature=0,
                                          messages=ask("What is the weather in Paris?"),
                                          tools=[WEATHER], tool_choice=choice)
    c = resp.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments),
                        WEATHER["function"]["parameters"])
    assert resp.usage.completion_tokens > 3
    # Streaming: the first delta names the call, the rest carry argument pieces.
    chunks = [ch for ch in client.chat.completions.create(
        model=MODEL, max_tokens=40, temperature=0, messages=ask("Weather in Oslo?"),
        tools=[WEATHER], tool_choice=choice, stream=True) if ch.choices]
    deltas = [tc for ch in chunks for tc in ch.choices[0].delta.tool_calls or ()]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    args = "".join(d.function.arguments for d in deltas)
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_tool_choice_calls_or_answers(client):
    """tool_choice auto (SmolLM2's template is ChatML): the model chooses between a call
    and a text answer; required forces a call. Streaming works for both."""
    weather = client.chat.completions.create(model=MODEL, max_tokens=40, temperature=0,
                                             messages=ask("What is the weather in Paris?"),
                                             tools=[WEATHER])
    c = weather.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls[0].function.name == \
        "get_weather"
    args = json.loads(c.message.tool_calls[0].function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert args["city"] == "Paris"
    chat = client.chat.completions.create(model=MODEL, max_tokens=20, temperature=0,
                                          messages=ask("Hi! How are you?"), tools=[WEATHER],
                                          tool_choice="auto")
    assert chat.choices[0].message.content and not chat.choices[0].message.tool_calls
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 20                # max_tokens covers the choice
    chunks = [ch for ch in client.chat.completions.create(
        model=MODEL, max_tokens=40, temperature=0, messages=ask("Hello there"),
        tools=[WEATHER], tool_choice="required", stream=True) if ch.choices]
    deltas = [tc for ch in chunks for tc in ch.choices[0].delta.tool_calls or ()]
    assert deltas[0].function.name == "get_weather"
    jsonschema.validate(json.loads("".join(d.function.arguments for d in deltas)),
                        WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_logprobs(client):
    resp = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0,
                                          messages=ask("Say hello."), logprobs=True,
                                          top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted(
            (a.logprob for a in t.top_logprobs), reverse=True)
        # Greedy decoding picks the most likely token.
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)
    stream = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0,
                                            messages=ask("Say hello."), logprobs=True,
                                            stream=True)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(t.top_logprobs == [] for t in streamed)       # top_logprobs not asked


def test_completion_logprobs(client):
    resp = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=4, temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == resp.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == 4
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == len("The capital of France is")


def test_seed_and_stop(client):
    def run(seed):
        return client.chat.completions.create(
            model=MODEL, max_tokens=12, temperature=1.5, seed=seed,
            messages=ask("Tell me a word.")).choices[0].message.content
    first = run(11)
    assert run(11) == first
    assert any(run(s) != first for s in (12, 13, 14))
    resp = client.chat.completions.create(
        model=MODEL, max_tokens=30, temperature=0, stop=["3."],
        messages=ask("Count from one to ten in words, separated by commas."))
    assert resp.choices[0].finish_reason == "stop" and "3." not in resp.choices[0].message.content


def test_logit_bias_steers_the_tokens(client):
    purple = "47078"     # SmolLM2's token for "purple"
    plain = client.chat.completions.create(model=MODEL, max_tokens=3, temperature=0,
                                           messages=ask("Say hello."))
    biased = client.chat.completions.create(model=MODEL, max_tokens=3, temperature=0,
                                            messages=ask("Say hello."),
                                            logit_bias={purple: 100})
    assert "purple" not in plain.choices[0].message.content
    assert biased.choices[0].message.content == "purple" * 3
    assert biased.usage.completion_tokens == 3       # still counted exactly


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0]"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}}},
     "response_format.json_schema.schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"999999": 5}}, "logit_bias"),
])
def test_unsupported_is_a_400_naming_the_field(gateway, api_key, extra, param):
    for stream in (False, True):
        r = httpx.post(gateway.url + "/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {api_key}"},
                       json={"model": MODEL, "messages": ask("hi"), "max_tokens": 5,
                             "stream": stream, **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


def test_tool_result_round_trip(client):
    """The assistant's call and the tool's answer go back in; the model answers in text."""
    messages = ask("What is the weather in Paris?") + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    resp = client.chat.completions.create(model=MODEL, max_tokens=20, temperature=0,
                                          messages=messages, tools=[WEATHER],
                                          tool_choice="none")
    assert resp.choices[0].message.content and not resp.choices[0].message.tool_calls
    # The call is in the prompt: without it the prompt is shorter by its JSON.
    messages[1] = {"role": "assistant", "content": None}
    bare = client.chat.completions.create(model=MODEL, max_tokens=1, temperature=0,
                                          messages=messages)
    assert resp.usage.prompt_tokens >= bare.usage.prompt_tokens + 10


def test_refusals_come_before_the_limits(inprocess_gw):
    """A refused request is refused before admission: it spends no quota. With a chat
    format that cannot show tools, tool_choice auto is refused too. (In-process
    gateway: tests.inprocess.)"""
    gw = inprocess_gw({"tiers": {"free": {}, "tight": {"tokens_per_minute": 200}},
                   "models": [{"name": MODEL, "backend": "llamacpp", "unknown_params": "pass",
                               "options": {"chat_format": "llama-2"}}]})
    key = gw.create_key(tier="tight")
    long = ask(" ".join(["word"] * 200))      # ~200+ tokens estimated: over the limit alone
    for _ in range(3):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": MODEL, "messages": long, "max_tokens": 5,
                             "reasoning_effort": "low"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort"
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": MODEL, "messages": ask("hi"), "max_tokens": 5})
    assert r.status_code == 200
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": MODEL, "messages": ask("hi"), "max_tokens": 5,
                         "tools": [WEATHER]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    # unknown_params = "pass": llama.cpp's own sampling fields work, others still a 400.
    for extra, status in (({"min_p": 0.2, "repeat_penalty": 1.3}, 200), ({"mirostat": 2}, 400)):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": MODEL, "messages": ask("hi"), "max_tokens": 3, **extra})
        assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == "mirostat"
    # Refusals are counted (error rates are usage data) but spend no tokens.
    refused = wait_until(lambda: [e for e in gw.usage_events() if e["status"] == 400],
                         what="the refusals' usage events")
    assert all(e["prompt_tokens"] == e["completion_tokens"] == 0 for e in refused)
