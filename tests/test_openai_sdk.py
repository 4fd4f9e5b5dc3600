"""The official openai SDK, unchanged, against the gateway and the real default model
(SmolLM2-135M-Instruct through llama-cpp-python)."""
import httpx
import openai
import pytest

from tests.helpers import sse_events

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "Say hello to the world in one short sentence."}]


@pytest.fixture(scope="module")
def client(gateway, api_key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0)


def test_models_lists_the_default_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_streaming_chat_yields_real_tokens_and_done(client):
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True,
                                            max_tokens=30, temperature=0)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2
    assert any(w in text.lower() for w in ("hello", "hi", "world", "greet")), text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)   # not asked for usage: none sent


def test_streaming_usage_only_when_asked(client, gateway, api_key):
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True,
                                            max_tokens=12, temperature=0,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.usage.prompt_tokens > 10
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # The raw stream ends with [DONE].
    raw = httpx.post(gateway.url + "/v1/chat/completions", timeout=60,
                     headers={"Authorization": f"Bearer {api_key}"},
                     json={"model": MODEL, "messages": HELLO, "stream": True, "max_tokens": 5})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])


def test_non_streaming_chat(client):
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20,
                                          temperature=0)
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content.strip()
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0


def test_max_tokens_is_honoured(client):
    resp = client.chat.completions.create(model=MODEL, max_tokens=3, temperature=0,
                                          messages=[{"role": "user",
                                                     "content": "Write a long story about a cat."}])
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3


def test_text_completions_stream_and_not(client):
    resp = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=8, temperature=0)
    assert resp.object == "text_completion" and resp.choices[0].text
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 8


def test_sdk_errors_map_to_sdk_exceptions(gateway, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=9)
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="ayct_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=HELLO)
